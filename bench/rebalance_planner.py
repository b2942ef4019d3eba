#!/usr/bin/env python3
"""Benchmark of the rebalancing planner: ``plan_rebalance`` on a seeded random cloud.

The cloud: ``--pools`` pools on backends of four pools each (half of the
backends take volumes over), a quarter of them above the 80% threshold;
``--volumes`` volumes of 1-100 GiB spread over them, some typed (pinned to a
backend), with snapshots, in-use, in error or in a group, and a few with a
migration in flight. Times the planning alone (the cloud is built once),
``--repeat`` times; prints a Markdown table and writes the details to
``bench/results/rebalance_planner.json``. No lab, no I/O besides that file.

Run: ``cd /work/main && PYTHONPATH=. .venv/bin/python bench/rebalance_planner.py [--volumes N --pools M --repeat R]``
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from bench.measure import log
from include.backends.base import GiB
from include.migration.planner import PoolState, RebalanceParams, VolumeState, plan_rebalance

RESULTS = Path(__file__).resolve().parent / "results" / "rebalance_planner.json"
POOLS_PER_BACKEND = 4


def cloud(n_volumes: int, n_pools: int, seed: int) -> tuple[list[PoolState], list[VolumeState]]:
    """Pools sized to hold the volumes: a quarter of them filled to 85-95%, the rest to 40-75%."""
    rng = random.Random(seed)
    names = [f"bench@b{i // POOLS_PER_BACKEND}#p{i}" for i in range(n_pools)]
    sizes = [rng.randint(1, 100) for _ in range(n_volumes)]
    homes = [rng.randrange(n_pools) for _ in range(n_volumes)]
    on_pool = Counter()
    for size, home in zip(sizes, homes, strict=True):
        on_pool[home] += size
    pools = []
    for i, name in enumerate(names):
        fill = rng.uniform(0.85, 0.95) if i % 4 == 0 else rng.uniform(0.40, 0.75)
        used = on_pool[i] * GiB
        total = max(int(used / fill), GiB)
        pools.append(
            PoolState(
                name,
                total,
                total - used,
                used,
                max_over_subscription_ratio=rng.choice((1.0, 1.5, 2.0)),
                up=rng.random() > 0.05,
                takeover=(i // POOLS_PER_BACKEND) % 2 == 0,
            )
        )
    backends = sorted({p.backend for p in pools})
    volumes = []
    for n, (size, home) in enumerate(zip(sizes, homes, strict=True)):
        flight = rng.random() < 0.01
        pin = rng.choice(backends) if rng.random() < 0.15 else None
        volumes.append(
            VolumeState(
                f"vol-{n:06d}",
                size * GiB,
                names[home],
                status=rng.choice(["available"] * 16 + ["in-use"] * 3 + ["error"]),
                volume_type=f"on-{pin}" if pin else rng.choice((None, "standard")),
                pinned_backend=pin,
                has_snapshots=rng.random() < 0.05,
                group_id="group-1" if rng.random() < 0.02 else None,
                migration_status="starting" if flight else None,
                migration_dest=rng.choice(names) if flight else None,
            )
        )
    return pools, volumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--threshold", type=float, default=80)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    pools, volumes = cloud(args.volumes, args.pools, args.seed)
    params = RebalanceParams(threshold=args.threshold)
    log(f"cloud: {len(volumes)} volumes over {len(pools)} pools (seed {args.seed}); planning {args.repeat} times")
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        plan = plan_rebalance(pools, volumes, params)
        times.append(time.perf_counter() - t0)
    over_before = sum(r > args.threshold / 100 for r in plan.before.values())
    over_after = sum(r > args.threshold / 100 for r in plan.after.values())
    row = {
        "volumes": len(volumes),
        "pools": len(pools),
        "pools_over_before": over_before,
        "pools_over_after": over_after,
        "moves": len(plan.moves),
        "moved_gib": round(plan.moved_bytes / GiB),
        "skipped": len(plan.skipped),
        "best_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
    }
    headers = ["volumes", "pools", "pools over (before -> after)", "moves", "skipped", "best s", "median s"]
    cells = [
        row["volumes"],
        row["pools"],
        f"{over_before} -> {over_after}",
        f"{row['moves']} ({row['moved_gib']} GiB)",
        row["skipped"],
        f"{row['best_s']:.3f}",
        f"{row['median_s']:.3f}",
    ]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    print("| " + " | ".join(str(c) for c in cells) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    details = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "result": row,
        "times_s": [round(t, 5) for t in times],
        "skipped_by_reason": dict(Counter(s.reason.value for s in plan.skipped).most_common()),
        "paths": dict(Counter(m.path.value for m in plan.moves)),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.output.write_text(json.dumps(details, indent=2) + "\n")
    log(f"details in {args.output}")


if __name__ == "__main__":
    main()
