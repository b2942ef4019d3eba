#!/usr/bin/env python3
"""The fault matrix (issue 12): every lab component killed in every phase of a migration, each trial judged.

Each trial (``lab/faults.py``) makes a 1 GiB volume with data, starts a
``volume_migration`` run through the phase, SIGKILLs the component's
process tree at a random point of the phase (arrays: also SIGSTOP for 40 s,
past the array client's timeout), runs ``lab up`` as an operator would,
and judges: the run ends in success (or failed, and clearing it succeeds);
no flushed write is lost and no read returns data never written (a client
attached through Cinder from the moment the volume is attachable); the
volume is not left locked; the audit finds nothing (else volume_audit
repairs, and what is left is counted).

Components: api-server, scheduler, dag-processor, triggerer, worker (the
LocalExecutor worker of the phase's task; the one that reads the task queue
while the run is deferred), cinder-api, cinder-scheduler, cinder-volume,
keystone, rabbitmq, postgres, source-array, target-array, ceph-mon,
ceph-mgr, ceph-osd (where the phase involves Ceph). Phases:
validate_and_lock, takeover, attachable_wait, commit, host_copy,
host_copy_ceph, rollback, ceph_takeover.

Prints one line per trial and a table per phase and per component at the
end; every outcome goes to ``bench/results/faults.json``. The order is drawn
from ``--seed``: the same seed gives the same trials and delays.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/faults.py [--seed 12] [--trials N]
[--first K] [--phases commit,rollback] [--components scheduler,postgres] [--keep]`` (a fresh lab in a temporary
folder; the whole matrix is 120 trials, a minute or two each).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.attachable import whole_lab
from bench.measure import log
from include.migration.steps import AUDIT_DAG
from lab.cli import ceph_of, cinder_of, services_of
from lab.faults import COMPONENTS, Matrix, Outcome, Phase, plan_trials

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"


def table(outcomes: list[Outcome], key: str) -> list[str]:
    """Per phase or component: trials, ok, failed runs cleared to success, lost, bad reads, stuck, orphans."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[str(getattr(o.trial, key))].append(o)
    rows = [(key, "trials", "ok", "run failed, cleared ok", "lost", "bad reads", "stuck", "orphans before/after")]
    for name, group in sorted(groups.items()):
        failed = [o for o in group if o.run.startswith("failed")]
        rows.append((
            name,
            str(len(group)),
            str(sum(o.ok for o in group)),
            f"{len(failed)}, {sum(o.run.endswith('success') for o in failed)}",
            str(sum(o.lost for o in group)),
            str(sum(o.bad_reads for o in group)),
            str(sum(o.stuck for o in group)),
            f"{sum(o.orphans_before for o in group)}/{sum(o.orphans_after for o in group)}",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return [lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--trials", type=int, help="how many (default: the whole matrix once)")
    parser.add_argument("--first", type=int, default=1, help="start at this trial of the seed's order (the matrix "
                        "in pieces: the same seed, --first where the last piece stopped)")  # fmt: skip
    parser.add_argument("--phases", help=f"comma-separated, of {', '.join(Phase)}")
    parser.add_argument("--components", help=f"comma-separated, of {', '.join(COMPONENTS)}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the outcomes go (JSON)")
    parser.add_argument("--root", type=Path, help="the lab's folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the tables of earlier runs' outcomes (pieces of one matrix) and stop")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report:
        return report([o for path in args.report for o in outcomes_from(path)], started=None)
    phases = [Phase(p) for p in args.phases.split(",")] if args.phases else None
    components = args.components.split(",") if args.components else None
    unknown = set(components or ()) - set(COMPONENTS)
    if unknown:
        parser.error(f"unknown components: {', '.join(sorted(unknown))}")
    trials = plan_trials(args.seed, args.trials, phases, components)[args.first - 1 :]
    log(f"{len(trials)} trials, seed {args.seed}, from #{args.first}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the lab goes down on the way out
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with whole_lab(args.root, "faults-lab-", "local", (AUDIT_DAG,), args.keep) as (lab, airflow, cinder):
        matrix = Matrix(lab, services_of(lab), cinder_of(lab), airflow, cinder, ceph_of(lab), log=log)
        for trial in trials:
            outcomes.append(matrix.run(trial))
            write(args, outcomes, started)
    return report(outcomes, started)


def report(outcomes: list[Outcome], started: float | None) -> int:
    """The tables per phase and per component, every trial that was not ok; 0 if all were."""
    print("\n".join(["", *table(outcomes, "phase"), "", *table(outcomes, "component")]))
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        print(f"NOT OK {o.trial.name}: run {o.run}, {o.error or ''} {'; '.join(o.notes)[:600]}")
    seeds = sorted({o.trial.seed // 1000 for o in outcomes})
    took = f", {(time.monotonic() - started) / 60:.1f} min" if started is not None else ""
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} trials ok, seed {', '.join(map(str, seeds))}{took}")
    return 0 if not bad else 1


def outcomes_from(path: Path) -> list[Outcome]:
    """The outcomes a run wrote (``--output``)."""
    return [Outcome.from_json(data) for data in json.loads(path.read_text())["outcomes"]]


def write(args: argparse.Namespace, outcomes: list[Outcome], started: float) -> None:
    results: dict[str, Any] = {
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seed": args.seed,
        "first": args.first,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "outcomes": [o.to_json() for o in outcomes],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
