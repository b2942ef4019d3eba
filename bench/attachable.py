#!/usr/bin/env python3
"""Time to attachable on the lab: from the REST trigger to ``migrating_attachable`` in Cinder, and where it goes.

For each move (``--moves``, ``<backend>=<pool host>``: by default beta to
alpha#pool1; ``ceph-hdd=lab@ceph-ssd#ceph-ssd`` is the RBD live migration of
``AsyncRBDDriver``) and each case (``--cases``, ``<runs>x<GiB>``: that many
volumes of that size on the move's backend, their ``volume_migration`` runs
triggered together), ``--repeat`` times, after one warm-up run of each DAG
(reported apart):

* the time from just before the trigger's POST to the first look at Cinder
  (one ``GET /volumes/detail`` every 0.2 s for all of them) that shows the
  volume ``migrating_attachable``;
* per task before it, from Airflow's own timestamps: the gap (the task before
  ended, or the trigger -> this one scheduled: the scheduler's loop), the
  wait (scheduled -> started: the executor and the task's process start) and
  the run (started -> ended: parsing the DAG file and the work);
* the same for as many runs of the lab's ``migration_floor`` DAG (the same
  shape, doing nothing): Airflow's own floor, and the ratio to it.

The copies then finish unthrottled before the next repeat. Prints one table
per case; the raw numbers go to ``bench/results/attachable.json``.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/attachable.py [--cases 1x1,8x1,1x16] [--repeat 5]
[--moves beta=lab@alpha#pool1,ceph-hdd=lab@ceph-ssd#ceph-ssd] [--executor local|celery] [--quick] [--keep]``
(a fresh lab in a temporary folder; about 6 minutes with the defaults; ``--quick``: 1x1 and 8x1 once each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.measure import log
from include.cinder_plugin.names import MIGRATING_ATTACHABLE
from include.migration.steps import MIGRATION_DAG, Step
from lab.cli import airflow_of, down_all, services_of, up_all
from lab.dags.migration_floor import FLOOR_DAG
from lab.fill import create_volumes, delete_volumes, lift_quotas
from lab.lab import Lab
from lab.services.cinder import CINDER_HOST

RESULTS = Path(__file__).resolve().parent / "results" / "attachable.json"
DEST = f"{CINDER_HOST}@alpha#pool1"
BEFORE_ATTACHABLE = (Step.VALIDATE_AND_LOCK, Step.SOURCE_DRIVER, Step.TARGET_TAKEOVER)  # the async path's
POLL_S = 0.2


def when(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def task_times(api: Any, dag_id: str, run_id: str, triggered: float) -> dict[str, dict[str, Any]]:
    """Per task before attachable, from Airflow's timestamps: ``gap`` (the task before it ended, or the trigger,
    -> scheduled), ``wait`` (scheduled -> started), ``run`` (started -> ended)."""
    tis = api.task_instances(dag_id, run_id)
    tasks, before = {}, triggered
    for step in BEFORE_ATTACHABLE:
        ti = tis[step]
        ready = when(ti.get("scheduled_when")) or when(ti.get("queued_when"))
        start, end = when(ti.get("start_date")), when(ti.get("end_date"))
        tasks[step] = {
            "gap_s": round(ready - before, 2) if ready and before else None,
            "wait_s": round(start - ready, 2) if start and ready else None,
            "run_s": round(end - start, 2) if start and end else None,
            "end": end,
            "state": ti["state"],
        }
        before = end or before
    return tasks


def trigger_together(api: Any, dag_id: str, confs: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Trigger one run per conf, one after the other at once: (run id, time just before its POST)."""
    runs = []
    for conf in confs:
        started = time.time()
        runs.append((api.trigger(dag_id, conf), started))
    return runs


@contextlib.contextmanager
def whole_lab(root: Path | None, prefix: str, executor: str, dags: tuple[str, ...], keep: bool) -> Iterator[Any]:
    """A whole lab for a bench (arrays, OpenStack, Airflow), in ``root`` or a new temporary folder: up, the lab's
    ``dags`` parsed; yields (lab, its Airflow, an admin Cinder hook without quotas); down at the end unless
    ``keep``."""
    lab = Lab(root or Path(tempfile.mkdtemp(prefix=prefix)))
    lab.root.chmod(0o711)
    airflow = airflow_of(lab, executor)
    try:
        up_all(lab)
        airflow.wait_dags(dags, 120)
        cinder = services_of(lab).cinder_hook("admin", retry_attempts=6, retry_seconds=60)
        lift_quotas(cinder)
        yield lab, airflow, cinder
    finally:
        if not keep:
            down_all(lab)


def look_for_attachable(cinder: Any, ids: Collection[str], seen: dict[str, float]) -> None:
    """One look at Cinder: the time of this look, in ``seen``, for each of ``ids`` that is attachable (or done)
    now and was not before."""
    now = time.time()
    for v in cinder.request("GET", "/volumes/detail?all_tenants=1&limit=1000")["volumes"]:
        if v["id"] in ids and v["id"] not in seen and v.get("migration_status") in (MIGRATING_ATTACHABLE, "success"):
            seen[v["id"]] = now


def one_case(api: Any, cinder: Any, runs: int, size_gib: int, source: str = "beta",
             dest: str = DEST) -> list[dict[str, Any]]:  # fmt: skip
    """Trigger ``runs`` migrations from backend ``source`` to pool host ``dest`` together; the time each took to be
    attachable, and its tasks' timestamps."""
    volumes = create_volumes(cinder, runs, source, size_gib, prefix="attachable")
    ids = [v["id"] for v in volumes]
    triggered = trigger_together(api, MIGRATION_DAG, [{"volume_id": vid, "dest_host": dest, "speed_mib": 0}
                                                       for vid in ids])  # fmt: skip
    attachable: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while len(attachable) < len(ids) and time.monotonic() < deadline:
        look_for_attachable(cinder, ids, attachable)
        time.sleep(POLL_S)
    rows = []
    for vid, (run_id, at) in zip(ids, triggered, strict=True):
        run = api.wait_run(MIGRATION_DAG, run_id, 1800, interval=2.0)
        rows.append({"volume_id": vid, "run_id": run_id, "run_state": run["state"], "size_gib": size_gib,
                     "attachable_s": round(attachable[vid] - at, 2) if vid in attachable else None,
                     "tasks": task_times(api, MIGRATION_DAG, run_id, at)})  # fmt: skip
    refused = delete_volumes(cinder, ids)
    if refused:
        log(f"volumes not deleted: {refused}")
    return rows


def floor_case(api: Any, runs: int) -> list[dict[str, Any]]:
    """Airflow's floor: ``runs`` runs of the lab's empty DAG of the same shape; "attachable" is the end of its
    ``target_takeover``."""
    rows = []
    for run_id, at in trigger_together(api, FLOOR_DAG, [{}] * runs):
        run = api.wait_run(FLOOR_DAG, run_id, 300, interval=0.5)
        tasks = task_times(api, FLOOR_DAG, run_id, at)
        end = tasks[Step.TARGET_TAKEOVER]["end"]
        rows.append({"run_id": run_id, "run_state": run["state"], "attachable_s": round(end - at, 2) if end else None,
                     "tasks": tasks})  # fmt: skip
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    times = [r["attachable_s"] for r in rows if r["attachable_s"] is not None]
    if len(times) < len(rows) or not times:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": percentile(times, 50), "p95": percentile(times, 95), "max": max(times)}


def table(case: str, rows: list[dict[str, Any]], floor: list[dict[str, Any]]) -> str:
    ours, base = summary(rows), summary(floor)
    ratio = f"{ours['p50'] / base['p50']:.1f}x" if ours["p50"] and base["p50"] else "-"
    lines = [f"case {case}: {len(rows)} runs; time to attachable p50 {ours['p50']} s, p95 {ours['p95']} s, "
             f"max {ours['max']} s; Airflow's floor (migration_floor) p50 {base['p50']} s, p95 {base['p95']} s; "
             f"p50 ratio to the floor {ratio}"]  # fmt: skip
    lines.append(f"  {'task':<24}{'gap p50':>9}{'wait p50':>9}{'run p50':>9}{'run max':>9}"
                 f"   floor:{'gap':>6}{'wait':>6}{'run':>6}")  # fmt: skip

    def med(rs: list[dict[str, Any]], step: str, col: str, agg: Any = statistics.median) -> str:
        values = [r["tasks"][step][col] for r in rs if r["tasks"][step][col] is not None]
        return f"{agg(values):.2f}" if values else "-"

    for step in BEFORE_ATTACHABLE:
        lines.append(f"  {step:<24}{med(rows, step, 'gap_s'):>9}{med(rows, step, 'wait_s'):>9}"
                     f"{med(rows, step, 'run_s'):>9}{med(rows, step, 'run_s', max):>9}"
                     f"         {med(floor, step, 'gap_s'):>6}{med(floor, step, 'wait_s'):>6}"
                     f"{med(floor, step, 'run_s'):>6}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="1x1,8x1,1x16", help="comma-separated <runs>x<GiB>")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--moves", default=f"beta={DEST}", help="comma-separated <backend>=<pool host>")
    parser.add_argument("--executor", choices=("local", "celery"), default="local")
    parser.add_argument("--root", type=Path, help="the lab's folder (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="1x1 and 8x1, once each")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.repeat = "1x1,8x1", 1
    results: dict[str, Any] = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"),
                               "executor": args.executor, "cases": {}}  # fmt: skip
    try:
        with whole_lab(args.root, "attachable-lab-", args.executor, (FLOOR_DAG,), args.keep) as (_, airflow, cinder):
            # the first run after a start compiles the tree's modules and fills the page cache: apart, not counted
            # (and a driver's first move may look up what it keeps: one warm-up run of each move)
            moves = [tuple(move.split("=", 1)) for move in args.moves.split(",")]
            warm = [row for source, dest in moves for row in one_case(airflow.api, cinder, 1, 1, source, dest)]
            results["warm_up"] = {"runs": warm, "floor": floor_case(airflow.api, 1)}
            log(f"warm-up runs: attachable after {[row['attachable_s'] for row in warm]} s (not counted)")
            for case in args.cases.split(","):
                runs, size = (int(x) for x in case.split("x"))
                rows: dict[tuple[str, ...], list] = {move: [] for move in moves}
                floor: list[dict[str, Any]] = []
                for n in range(args.repeat):  # each move in turn within a repeat: side by side in one lab
                    log(f"case {case}, repeat {n + 1}/{args.repeat}")
                    for source, dest in moves:
                        rows[(source, dest)] += one_case(airflow.api, cinder, runs, size, source, dest)
                    floor += floor_case(airflow.api, runs)
                for (source, dest), found in rows.items():
                    name = case if len(moves) == 1 else f"{case} {source} -> {dest}"
                    results["cases"][name] = {"runs": found, "floor": floor}
                    print(table(name, found, floor), flush=True)
    finally:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
