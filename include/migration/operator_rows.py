"""What the operator view shows of the runs, and which controls a row offers: plain functions, no Airflow.

The view (``plugins/operator_view.py``) reads Airflow's database and
Cinder, and hands each ``volume_migration`` run to ``migration_row`` as
``RunFacts``: the run's state and conf, each task's state, the plan that
``validate_and_lock`` locked (its XCom), the failures the steps recorded,
and the copy's progress when one is running. A row says: the volume, source
-> destination, the path the run took, where it is, the progress (percent,
rate, ETA) and the controls that apply now and the destination's driver
offers. Only a takeover's background copy can be paused, resumed or re-paced
(the destination's driver runs it, asked through Cinder); a
host copy runs inside an Airflow task and is paced by the run's
``speed_mib``; a mirror-mode copy may also be abandoned before its
switch-over.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from include.backends.base import GiB, MigrationProgress, MigrationState
from include.backends.features import Features
from include.migration.dispatch import rebalance_of
from include.migration.notices import run_url, step_url
from include.migration.steps import MIGRATION_DAG, REBALANCE_DAG, Step

RUNNING_RUN_STATES = frozenset({"queued", "running"})
DONE_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
LIVE_TASK_STATES = frozenset({"scheduled", "queued", "running", "deferred", "up_for_retry", "up_for_reschedule"})


class CopyPath(enum.StrEnum):
    """The blueprint's three ways, as the view names them."""

    UNDECIDED = "-"
    POOL_MOVE = "pool move (source driver)"
    TAKEOVER = "takeover (target driver)"
    HOST_COPY = "host copy"


class Control(enum.StrEnum):
    """What an operator may do to a running array copy (``POST .../<run>/<control>``)."""

    PAUSE = "pause"
    RESUME = "resume"
    SPEED = "speed"
    ABANDON = "abandon"  # a mirror before its switch-over: back to the source (flow.abandon)


@dataclass(frozen=True)
class RunFacts:
    """One ``volume_migration`` run as Airflow has it."""

    run_id: str
    state: str
    conf: dict[str, Any]
    task_states: dict[str, str]
    plan: dict[str, Any] | None = None  # validate_and_lock's XCom (``Plan.to_json``), once it succeeded
    failures: list[str] = field(default_factory=list)
    started: datetime | None = None
    ended: datetime | None = None
    task_ended: dict[str, datetime] = field(default_factory=dict)  # task id -> when it ended (the tasks that did)


@dataclass(frozen=True)
class MigrationRow:
    run_id: str
    volume_id: str
    source: str
    dest: str
    path: str
    copy_mode: str
    state: str  # the run's
    step: str  # the task that runs (or waits) now, else the run's end
    copy_state: str  # the copy's: copying, paused, done, failed, or "-"
    percent: float | None
    rate_mib_s: float | None
    eta_s: float | None
    controls: tuple[str, ...]
    failure: str
    started: str | None
    ended: str | None
    rebalance: str | None  # the volume_rebalance run that started it
    run_path: str = ""  # the run's page in Airflow's UI, below its base URL
    step_path: str = ""  # the page (and log) of the step the row names: the one that failed, runs or ran last
    trail: tuple[dict[str, str], ...] = ()  # the controls operators used on it, oldest first (Airflow's audit log)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "controls": list(self.controls), "trail": list(self.trail)}


@dataclass(frozen=True)
class RowFilter:
    """What the operator view's filters ask: every given part must match (empty: anything)."""

    volume: str = ""  # a part of the volume's id
    pool: str = ""  # a part of the source's or the destination's host@backend#pool
    state: str = ""  # the run's state: queued, running, success, failed
    since: datetime | None = None  # started at or after

    @property
    def empty(self) -> bool:
        return not (self.volume or self.pool or self.state or self.since)

    def matches(self, row: MigrationRow) -> bool:
        if self.volume and self.volume.lower() not in row.volume_id.lower():
            return False
        if self.pool and not any(self.pool.lower() in host.lower() for host in (row.source, row.dest)):
            return False
        if self.state and row.state != self.state:
            return False
        if self.since is not None:
            started = datetime.fromisoformat(row.started) if row.started else None
            since = self.since if self.since.tzinfo or not started else self.since.replace(tzinfo=started.tzinfo)
            if started is None or started < since:
                return False
        return True


def step_of(facts: RunFacts) -> str:
    """The step a row links to: the first that failed, else the one running, else the last that ran."""
    states = facts.task_states
    for wanted in (("failed",), tuple(LIVE_TASK_STATES)):
        for step in Step:
            if states.get(step) in wanted:
                return step.value
    ran = [step for step in Step if states.get(step) == "success"]
    return ran[-1].value if ran else Step.VALIDATE_AND_LOCK.value


def path_of(task_states: dict[str, str]) -> CopyPath:
    """The path a run takes, from which of the three steps did (or does) the move."""
    if task_states.get(Step.HOST_COPY) not in (None, "skipped", "upstream_failed", "removed"):
        return CopyPath.HOST_COPY
    if task_states.get(Step.WAIT_FOR_COPY) not in (None, "skipped", "upstream_failed", "removed"):
        return CopyPath.TAKEOVER
    if task_states.get(Step.SOURCE_DRIVER) == "success" and task_states.get(Step.TARGET_TAKEOVER) == "skipped":
        return CopyPath.POOL_MOVE
    return CopyPath.UNDECIDED


def array_copy_running(facts: RunFacts) -> bool:
    """The run waits for a takeover's background copy on the destination array (the array's copy to watch)."""
    states = facts.task_states
    return (
        facts.state in RUNNING_RUN_STATES
        and facts.plan is not None
        and states.get(Step.TARGET_TAKEOVER) == "success"
        and states.get(Step.WAIT_FOR_COPY) in LIVE_TASK_STATES
    )


def host_copy_running(facts: RunFacts) -> bool:
    return facts.state in RUNNING_RUN_STATES and facts.task_states.get(Step.HOST_COPY) in LIVE_TASK_STATES


def current_step(facts: RunFacts) -> str:
    """The first task (in the blueprint's order) that is not done yet, else how the run ended."""
    if facts.state not in RUNNING_RUN_STATES:
        return facts.state
    for step in Step:
        state = facts.task_states.get(step)
        if state in LIVE_TASK_STATES:
            return f"{step} ({state})"
    return facts.state


def controls_for(
    facts: RunFacts, progress: MigrationProgress | None, features: Features | None = None
) -> tuple[Control, ...]:
    """Pause or resume (whichever applies) and speed for a takeover's copy that runs, and abandon while its
    source has every write (``progress.abandonable``: a mirror before its switch-over, an RBD live migration; the
    destination refuses it when that changed since); nothing otherwise. With ``features`` (what the destination's
    driver offers), only the controls it offers."""
    if not array_copy_running(facts) or progress is None or progress.state.terminal:
        return ()
    pace = (Control.RESUME if progress.state is MigrationState.PAUSED else Control.PAUSE, Control.SPEED)
    offered = pace + ((Control.ABANDON,) if progress.abandonable else ())
    return offered if features is None else tuple(c for c in offered if getattr(features, c.value))


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def migration_row(
    facts: RunFacts, progress: MigrationProgress | None = None, features: Features | None = None,
    trail: tuple[dict[str, str], ...] = (),
) -> MigrationRow:  # fmt: skip
    """The row of one run; ``progress``: the copy's, when one runs (the destination's, or the host copy's report);
    ``features``: what the destination's driver offers (``controls_for``); ``trail``: the controls used on it."""
    plan, conf = facts.plan or {}, facts.conf or {}
    path = path_of(facts.task_states)
    if facts.state == "success" and path is not CopyPath.UNDECIDED:
        percent: float | None = 100.0
        copy_state = MigrationState.DONE.value
    elif progress is not None:
        percent, copy_state = round(progress.percent, 1), progress.state.value
    else:
        percent, copy_state = None, "-"
    live = progress is not None and facts.state in RUNNING_RUN_STATES
    return MigrationRow(
        run_id=facts.run_id,
        volume_id=str(plan.get("volume_id") or conf.get("volume_id") or ""),
        source=str(plan.get("source_host") or ""),
        dest=str(plan.get("dest_host") or conf.get("dest_host") or ""),
        path=path.value,
        copy_mode=str(plan.get("copy_mode") or conf.get("copy_mode") or ""),
        state=facts.state,
        step=current_step(facts),
        copy_state=copy_state,
        percent=percent,
        rate_mib_s=round(progress.rate_bps / (1 << 20), 1) if live and progress else None,
        eta_s=progress.eta_seconds if live and progress else None,
        controls=tuple(c.value for c in controls_for(facts, progress, features)),
        failure=facts.failures[0] if facts.failures else "",
        started=_when(facts.started),
        ended=_when(facts.ended),
        rebalance=rebalance_of(facts.run_id),
        run_path=run_url("", MIGRATION_DAG, facts.run_id),
        step_path=step_url("", MIGRATION_DAG, facts.run_id, step_of(facts)),
        trail=trail,
    )


@dataclass(frozen=True)
class RebalanceRow:
    run_id: str
    state: str
    started: str | None
    ended: str | None
    conf: dict[str, Any]
    moves: dict[str, int]  # the volume_migration runs it started, by their state
    planned: int | None = None  # moves in its plan (the plan step's output), None before it planned
    planned_gib: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)  # its moves' results (the migrate step's), by outcome
    run_path: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rebalance_row(run_id: str, state: str, started: datetime | None, ended: datetime | None, conf: dict[str, Any],
                  moves: dict[str, int], plan: Any = None, results: Any = None) -> RebalanceRow:  # fmt: skip
    """A rebalance run's row; ``plan``: its plan step's output (``RebalancePlan.to_json``), ``results``: its migrate
    step's (a ``MoveResult.to_json`` per move), as Airflow keeps them."""
    planned = plan.get("moves") if isinstance(plan, dict) and isinstance(plan.get("moves"), list) else None
    outcomes: dict[str, int] = {}
    for result in results if isinstance(results, list) else ():
        if isinstance(result, dict):
            outcomes[str(result.get("outcome"))] = outcomes.get(str(result.get("outcome")), 0) + 1
    return RebalanceRow(
        run_id, state, _when(started), _when(ended), conf, moves,
        planned=None if planned is None else len(planned),
        planned_gib=None if planned is None else round(sum(int(m.get("size_bytes") or 0) for m in planned) / GiB, 1),
        outcomes=outcomes, run_path=run_url("", REBALANCE_DAG, run_id),
    )  # fmt: skip


def trail_entry(when: datetime | None, who: str | None, event: str, extra: Any) -> dict[str, str]:
    """One control as the row shows it, from Airflow's audit log (``Log``: its ``extra`` is our JSON)."""
    details = extra if isinstance(extra, dict) else {}
    return {
        "when": _when(when) or "",
        "who": who or "?",
        "what": str(details.get("what") or event.rsplit(".", 1)[-1]),
        "result": str(details.get("result") or ""),
    }
