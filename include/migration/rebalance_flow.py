"""The steps of one rebalance run, as plain functions (no Airflow here): each is a task of ``volume_rebalance``.

* ``plan``: validate the params (the pool names against Cinder's), read
  Cinder, plan, log the plan as a table; bad params fail before anything is
  read or changed;
* ``migrate``: unless a dry run, carry the plan out (``dispatch``) and return
  a result per move;
* ``summarize``: read the pools again and put every volume's result and the
  pools before and after in one summary.
"""

from __future__ import annotations

import logging
from typing import Any

from include.migration.cinder_api import CinderApi
from include.migration.dispatch import MoveResult, Ports, dispatch, planned
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


def migrate(
    conf: dict[str, Any], plan: RebalancePlan, rebalance_run_id: str, ports: Ports, poll_s: float = 5.0
) -> list[MoveResult]:
    """Every move of ``plan`` run as its own ``volume_migration`` run under the limits (a dry run starts none)."""
    request = parse_rebalance_request(conf)
    if request.dry_run:
        log.info("dry run: %d move(s) planned, none started", len(plan.moves))
        return planned(plan.moves)
    state = dispatch(plan.moves, request.limits, rebalance_run_id, ports, poll_s=poll_s)
    peaks = ", ".join(f"{k} {v}" for k, v in sorted(state.peak.items()))
    log.info("most migrations in flight at once (as polled): %s", peaks or "none")
    return [state.results[m.volume_id] for m in plan.moves]  # in plan order


def summary(
    conf: dict[str, Any], plan: RebalancePlan, results: list[MoveResult], cinder: CinderApi
) -> RebalanceSummary:
    """The run's summary; the pools' used ratios after it read from Cinder (a dry run: the plan's projection)."""
    dry_run = parse_rebalance_request(conf).dry_run
    after = plan.after if dry_run else {p.name: p.used_ratio for p in read_pools(cinder)}
    done = summarize(plan, results, after, dry_run=dry_run)
    log.info("%s", format_summary(done))
    return done
