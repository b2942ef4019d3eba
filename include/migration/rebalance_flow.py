"""The steps of one rebalance run, as plain functions (no Airflow here): each is a task of ``volume_rebalance``.

* ``plan``: validate the params (the pool names against Cinder's), read
  Cinder, plan, log the plan as a table; bad params fail before anything is
  read or changed;
* ``migrate``: unless a dry run, carry the plan out in rounds (``begin_moves``,
  then ``Dispatch.round`` until it is done, the task deferred between rounds)
  and return a result per move (``moves_done``);
* ``summarize``: read the pools again and put every volume's result and the
  pools before and after in one summary.
"""

from __future__ import annotations

import logging
from typing import Any

from include.migration.cinder_api import CinderApi
from include.migration.deadlines import deadline_text, rebalance_timeout
from include.migration.dispatch import Dispatch, MoveResult, Ports, planned
from include.migration.inventory import read_cloud, read_pools
from include.migration.planner import RebalancePlan, format_plan, plan_rebalance
from include.migration.rebalance import parse_rebalance_request
from include.migration.rebalance_report import RebalanceSummary, format_summary, summarize

log = logging.getLogger(__name__)


def plan(conf: dict[str, Any], cinder: CinderApi) -> RebalancePlan:
    """Refuse bad params (InvalidParams naming each), then plan on what Cinder says now."""
    parse_rebalance_request(conf)  # everything that needs no Cinder, before any call to it
    cloud = read_cloud(cinder)
    request = parse_rebalance_request(conf, cloud.pool_names)
    result = plan_rebalance(cloud.pools, cloud.volumes, request.planner_params())
    log.info("%s", format_plan(result))
    return result


def begin_moves(conf: dict[str, Any], plan: RebalancePlan, rebalance_run_id: str, ports: Ports,
                now: float) -> Dispatch | None:  # fmt: skip
    """The dispatcher's state before its first round, with the rebalance's deadline derived from the moves (their
    copies at ``speed_mib``, ``max_total`` at a time); None for a dry run (nothing is started)."""
    request = parse_rebalance_request(conf)
    if request.dry_run:
        log.info("dry run: %d move(s) planned, none started", len(plan.moves))
        return None
    deadline_s = rebalance_timeout((m.size_bytes for m in plan.moves), request.speed_mib, request.limits.total)
    log.info("following %d move(s) until %s at most (each copy's derived time, %d at a time)", len(plan.moves),
             deadline_text(now + deadline_s), request.limits.total)  # fmt: skip
    return Dispatch.begin(plan.moves, rebalance_run_id, ports, now, deadline_s)


def moves_done(plan: RebalancePlan, state: Dispatch | None) -> list[MoveResult]:
    """A result per move of ``plan``, in plan order, once the dispatcher is done (a dry run: every move planned)."""
    if state is None:
        return planned(plan.moves)
    state.close()
    peaks = ", ".join(f"{k} {v}" for k, v in sorted(state.peak.items()))
    log.info("most migrations in flight at once (as polled): %s", peaks or "none")
    return [state.results[m.volume_id] for m in plan.moves]


def summary(
    conf: dict[str, Any], plan: RebalancePlan, results: list[MoveResult], cinder: CinderApi
) -> RebalanceSummary:
    """The run's summary; the pools' used ratios after it read from Cinder (a dry run: the plan's projection)."""
    dry_run = parse_rebalance_request(conf).dry_run
    after = plan.after if dry_run else {p.name: p.used_ratio for p in read_pools(cinder)}
    done = summarize(plan, results, after, dry_run=dry_run)
    log.info("%s", format_summary(done))
    return done
