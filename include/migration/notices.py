"""What a notice of a failure says: plain functions of what a run recorded, for the mail an operator receives.

Three occasions (``plugins/notifiers/failure_notice.py`` sends them):

* a ``volume_migration`` run failed: the volume and its destination, each failed step with its reason (what
  the step recorded, the ``failure`` XCom), a link to each failed step's log;
* a ``volume_rebalance`` run whose moves failed (the run itself may succeed: its summary lists them) or that
  failed: each failed move (volume, source, destination, reason, its migration run);
* a ``volume_audit`` run that left inconsistencies (it fails): the audit's reason, which lists each finding left
  and its action.

Every notice links to its run in Airflow's UI (``{base_url}/dags/{dag_id}/runs/{run_id}``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from include.migration.dispatch import MoveResult, Outcome
from include.migration.steps import AUDIT_DAG, MIGRATION_DAG, REBALANCE_DAG

TAG = "[volume migration]"  # the subject's first word: what a mail filter sorts on


@dataclass(frozen=True)
class Notice:
    subject: str
    lines: tuple[str, ...]

    def html(self) -> str:
        """The body as HTML (what Airflow's SMTP hook sends): the text as it is, its links made links."""

        def linked(word: str) -> str:
            text = html.escape(word)
            return f'<a href="{text}">{text}</a>' if word.startswith(("http://", "https://")) else text

        return "<pre>" + "\n".join(" ".join(map(linked, line.split(" "))) for line in self.lines) + "</pre>"


def run_url(base_url: str, dag_id: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def step_url(base_url: str, dag_id: str, run_id: str, step: str) -> str:
    """The step's page in the run, with its log."""
    return f"{run_url(base_url, dag_id, run_id)}/tasks/{quote(step)}"


def what_failed(dag_id: str, conf: dict[str, Any]) -> str:
    if dag_id == MIGRATION_DAG:
        dest = conf.get("dest_host") or "the pool Cinder's scheduler picks"
        return f"volume {conf.get('volume_id') or '?'} to {dest}"
    if dag_id == REBALANCE_DAG:
        return "the rebalance" + (" (dry run)" if conf.get("dry_run") else "")
    if dag_id == AUDIT_DAG:
        return "the audit" + (" with repair" if conf.get("repair") else "")
    return dag_id


def failed_run(dag_id: str, run_id: str, conf: dict[str, Any], failed: Iterable[tuple[str, str]], base_url: str,
               reason: str = "") -> Notice:  # fmt: skip
    """A run that failed: each failed step with the reason it recorded (``""``: none) and a link to its log;
    ``reason``, Airflow's word for the run's end, when no step failed."""
    what = what_failed(dag_id, conf)
    lines = [f"{dag_id} run {run_id} failed: {what}.", ""]
    steps = list(failed)
    for step, why in steps:
        lines += [f"step {step}: {why or 'failed (its log says why)'}",
                  f"  log: {step_url(base_url, dag_id, run_id, step)}"]  # fmt: skip
    if not steps:
        lines.append(f"no step failed ({reason or 'see the run'})")
    lines += ["", f"run: {run_url(base_url, dag_id, run_id)}"]
    return Notice(f"{TAG} {dag_id} failed: {what}", tuple(lines))


def failed_moves(run_id: str, results: Iterable[MoveResult], base_url: str) -> Notice | None:
    """A rebalance's failed moves (None when none failed): each with its reason and its migration run."""
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    if not failed:
        return None
    lines = [f"{REBALANCE_DAG} run {run_id}: {len(failed)} moves failed.", ""]
    for move in failed:
        lines.append(f"volume {move.volume_id}: {move.source} -> {move.destination} ({move.path}): "
                     f"{move.reason or 'failed'}")  # fmt: skip
        if move.run_id:
            lines.append(f"  run: {run_url(base_url, MIGRATION_DAG, move.run_id)}")
    lines += ["", f"rebalance run: {run_url(base_url, REBALANCE_DAG, run_id)}"]
    return Notice(f"{TAG} {REBALANCE_DAG}: {len(failed)} moves failed", tuple(lines))
