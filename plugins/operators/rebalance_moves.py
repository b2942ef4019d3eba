"""volume_rebalance's ``migrate`` step: one volume_migration run per move, the task deferred between rounds.

Each round (``include.migration.dispatch.Dispatch.round``) notes the runs
that ended and starts the moves the limits admit; then the task defers to
``MigrationRunsTrigger`` with the dispatcher's state (JSON) and holds no
worker slot until one of its runs ends, or ``wake_after_s`` passes while
moves wait for a place under the limits (a migration someone else started
may have ended). A cleared task starts over from the plan and follows the
runs it started before (their run ids are fixed), never starting a second
migration of a volume.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator

from include.migration import rebalance_flow as flow
from include.migration.dispatch import Dispatch
from include.migration.planner import RebalancePlan
from include.migration.rebalance import parse_rebalance_request
from plugins import migration_runtime as rt
from plugins.rebalance_runtime import AirflowPorts
from plugins.triggers.migration_runs import MigrationRunsTrigger

IDLE_WAKE_S = 3600.0  # with no move waiting, the task wakes this often at most (for the rebalance's deadline)


class RebalanceMovesOperator(BaseOperator):
    template_fields = ("planned",)

    def __init__(self, *, planned: Any, poll_interval: float = 5.0, wake_after_s: float = 60.0, **kwargs: Any) -> None:
        """``planned``: the plan step's output (a ``RebalancePlan`` as JSON, or an XComArg of it); the trigger looks
        at the runs every ``poll_interval`` s and wakes the task after ``wake_after_s`` while moves wait."""
        super().__init__(**kwargs)
        self.planned = planned
        self.poll_interval = poll_interval
        self.wake_after_s = wake_after_s

    def execute(self, context: Any) -> list[dict[str, Any]]:
        plan = RebalancePlan.from_json(self.planned)
        state = flow.begin_moves(dict(context["params"]), plan, context["run_id"], self._ports(context), time.time())
        return self._go_on(context, plan, state)

    def next_round(self, context: Any, event: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                   ) -> list[dict[str, Any]]:  # fmt: skip
        """Resumed by the trigger's event: the next round, from the state the last one deferred with."""
        if event and event.get("status") == "ended":
            self.log.info("run %s ended %s", event.get("run_id"), event.get("state"))
        elif event and event.get("message"):
            self.log.warning("the trigger could not look at the runs: %s", event["message"])
        return self._go_on(context, RebalancePlan.from_json(self.planned), Dispatch.from_json(state or {}))

    def _ports(self, context: Any) -> AirflowPorts:
        return AirflowPorts(context["ti"], rt.cinder(), context["params"].get("speed_mib"))

    def _go_on(self, context: Any, plan: RebalancePlan, state: Dispatch | None) -> list[dict[str, Any]]:
        if state is not None and state.busy:
            limits = parse_rebalance_request(dict(context["params"])).limits
            now = time.time()
            if state.round(limits, self._ports(context), now):
                wake = self.wake_after_s if state.pending else min(IDLE_WAKE_S, max(1.0, state.ends_at - now))
                self.log.info("%d move(s) running, %d waiting: deferred until one ends (or %.0f s pass)",
                              len(state.running), len(state.pending), wake)  # fmt: skip
                self.defer(
                    trigger=MigrationRunsTrigger(
                        [r.run_id for r in state.running.values()], poll_interval=self.poll_interval, wake_after_s=wake
                    ),  # fmt: skip
                    method_name="next_round",
                    kwargs={"state": state.to_json()},
                )
        return [r.to_json() for r in flow.moves_done(plan, state)]
