"""What Prometheus scrapes: migrations, copies, rebalances and audits as metric families (plain functions).

``GET /volume-migration/metrics`` (``plugins/operator_view_app.py``) reads
Airflow's database and Cinder into ``ScrapeFacts`` and renders
``families(facts)`` in Prometheus's text format; nothing here reads either.
Every number is computed at the scrape from what Airflow keeps (its runs,
task instances and XComs), so it survives api-server restarts and needs no
store of its own; a run deleted from Airflow's database (``airflow db
clean``) leaves the counts, which Prometheus's ``increase()`` and
``rate()`` take as a counter reset.

The families (``PREFIX`` = ``cinder_volume_migration``):

* ``..._runs_total{state, path}`` counter: ended ``volume_migration`` runs
  (``success``, ``failed``) by the path they took;
* ``..._in_flight{path}`` gauge: runs queued or running;
* ``..._time_to_attachable_seconds{path}`` histogram: from a successful
  run's start to the volume being usable (a takeover: ``target_takeover``
  done; a pool move or a host copy: ``commit`` done);
* ``..._duration_seconds{path}`` histogram: a successful run, start to end;
* ``..._bytes_copied_total{backend}`` counter: the size of every volume
  moved, by destination backend;
* ``..._copy_rate_bytes_per_second{backend}`` gauge: the copies running now,
  summed by destination backend (as their drivers or the host copy report);
* ``..._copy_progress_ratio{volume_id, backend}`` gauge: each running copy;
* ``cinder_volume_rebalance_moves_total{outcome}`` counter: the moves of the
  ended rebalance runs (``moved``, ``failed``, ``not_started``,
  ``still_running``);
* ``cinder_volume_audit_findings{kind}`` gauge: the findings of the last
  audit that looked (every kind, 0 when none), and
  ``cinder_volume_audit_last_run_timestamp_seconds``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from include.backends.base import MigrationProgress
from include.migration.audit import Kind
from include.migration.flow import backend_of
from include.migration.operator_rows import RUNNING_RUN_STATES, CopyPath, RunFacts, path_of
from include.migration.steps import Step

PREFIX = "cinder_volume_migration"
# seconds: a takeover is usable in about 2 s, a host copy of a large volume after hours
TIME_BUCKETS = (1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 3 * 86400)
ENDED_RUN_STATES = ("success", "failed")
PATH_LABELS = {
    CopyPath.UNDECIDED: "none",  # refused or failed before a path was taken
    CopyPath.POOL_MOVE: "pool_move",
    CopyPath.TAKEOVER: "takeover",
    CopyPath.HOST_COPY: "host_copy",
}


@dataclass(frozen=True)
class ScrapeFacts:
    """What one scrape read: the ``volume_migration`` runs (with task end times), the copies running now, the
    outcomes of every move of the ended rebalance runs, and the last audit's findings."""

    runs: list[RunFacts]
    progress: dict[str, MigrationProgress] = field(default_factory=dict)  # run id -> its running copy
    rebalance_moves: list[str] = field(default_factory=list)  # one outcome per move (dispatch.Outcome)
    audit_kinds: list[str] | None = None  # one kind per finding of the last audit; None: no audit looked yet
    audit_at: datetime | None = None


def path_label(facts: RunFacts) -> str:
    return PATH_LABELS[path_of(facts.task_states)]


def usable_at(facts: RunFacts) -> datetime | None:
    """When a successful run's volume became usable: a takeover once marked attachable, the others at commit."""
    step = Step.TARGET_TAKEOVER if path_of(facts.task_states) is CopyPath.TAKEOVER else Step.COMMIT
    return facts.task_ended.get(step)


def _histogram(name: str, doc: str, samples: dict[str, list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["path"])
    for path, values in sorted(samples.items()):
        buckets = [(str(float(le)), sum(1 for v in values if v <= le)) for le in TIME_BUCKETS]
        family.add_metric([path], buckets + [("+Inf", len(values))], sum_value=sum(values))
    return family


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def migration_families(runs: Iterable[RunFacts], progress: dict[str, MigrationProgress]) -> Iterator[Metric]:
    ended: Counter[tuple[str, str]] = Counter()
    flying: Counter[str] = Counter({label: 0 for label in PATH_LABELS.values()})
    to_usable: dict[str, list[float]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    copied: Counter[str] = Counter()
    rates: Counter[str] = Counter()
    ratios = GaugeMetricFamily(f"{PREFIX}_copy_progress_ratio", "Share of each running copy done (0-1)",
                               labels=["volume_id", "backend"])  # fmt: skip
    for facts in runs:
        path, plan = path_label(facts), facts.plan or {}
        if facts.state in RUNNING_RUN_STATES:
            flying[path] += 1
        elif facts.state in ENDED_RUN_STATES:
            ended[facts.state, path] += 1
        if facts.state == "success" and plan:
            copied[backend_of(plan["dest_host"])] += int(plan.get("size") or 0)
            for samples, end in ((to_usable, usable_at(facts)), (durations, facts.ended)):
                seconds = _seconds(facts.started, end)
                if seconds is not None:
                    samples[path].append(seconds)
        now = progress.get(facts.run_id)
        if now is not None and plan and facts.state in RUNNING_RUN_STATES:
            backend = backend_of(plan["dest_host"])
            rates[backend] += now.rate_bps
            ratios.add_metric([plan["volume_id"], backend], now.percent / 100)
    runs_total = CounterMetricFamily(f"{PREFIX}_runs", "Ended volume_migration runs, by state and path",
                                     labels=["state", "path"])  # fmt: skip
    for state in ENDED_RUN_STATES:
        for path in PATH_LABELS.values():
            runs_total.add_metric([state, path], ended[state, path])
    yield runs_total
    in_flight = GaugeMetricFamily(f"{PREFIX}_in_flight", "volume_migration runs queued or running", labels=["path"])
    for path, n in sorted(flying.items()):
        in_flight.add_metric([path], n)
    yield in_flight
    yield _histogram(f"{PREFIX}_time_to_attachable_seconds",
                     "Successful runs: from the run's start until the volume was usable", to_usable)  # fmt: skip
    yield _histogram(f"{PREFIX}_duration_seconds", "Successful runs: from start to end", durations)
    bytes_copied = CounterMetricFamily(f"{PREFIX}_bytes_copied", "Bytes of the volumes moved, by destination backend",
                                       labels=["backend"])  # fmt: skip
    for backend, n in sorted(copied.items()):
        bytes_copied.add_metric([backend], n)
    yield bytes_copied
    rate = GaugeMetricFamily(f"{PREFIX}_copy_rate_bytes_per_second", "The copies running now, by destination backend",
                             labels=["backend"])  # fmt: skip
    for backend, bps in sorted(rates.items()):
        rate.add_metric([backend], bps)
    yield rate
    yield ratios


def rebalance_families(outcomes: Iterable[str]) -> Iterator[Metric]:
    from include.migration.dispatch import Outcome

    counts = Counter(outcomes)
    moves = CounterMetricFamily("cinder_volume_rebalance_moves", "Moves of the ended volume_rebalance runs, by outcome",
                                labels=["outcome"])  # fmt: skip
    for outcome in Outcome:
        if outcome is not Outcome.PLANNED:
            moves.add_metric([outcome.value], counts[outcome.value])
    yield moves


def audit_families(kinds: list[str] | None, at: datetime | None) -> Iterator[Metric]:
    if kinds is None:
        return
    counts = Counter(kinds)
    findings = GaugeMetricFamily("cinder_volume_audit_findings", "Findings of the last volume_audit, by kind",
                                 labels=["kind"])  # fmt: skip
    for kind in Kind:
        findings.add_metric([kind.value], counts[kind.value])
    yield findings
    if at is not None:
        yield GaugeMetricFamily("cinder_volume_audit_last_run_timestamp_seconds", "When the last audit looked",
                                value=at.timestamp())  # fmt: skip


def families(facts: ScrapeFacts) -> Iterator[Metric]:
    """Every metric family of one scrape."""
    yield from migration_families(facts.runs, facts.progress)
    yield from rebalance_families(facts.rebalance_moves)
    yield from audit_families(facts.audit_kinds, facts.audit_at)


def render(facts: ScrapeFacts) -> bytes:
    """The scrape's answer in Prometheus's text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Collector:
        def collect(self) -> Iterator[Metric]:
            return families(facts)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    return generate_latest(registry)
