"""The operator view's app: the page, the rows as JSON, and the controls of a running copy.

Mounted by the api-server under ``/volume-migration`` (``plugins/operator_view.py``):

* the FastAPI app (``fastapi_apps``):
  ``GET /`` the page (``operator_view.html``), ``GET /api/migrations`` the
  rows as JSON (``include/migration/operator_rows.py``), and
  ``GET /metrics`` for Prometheus (``include/migration/metrics.py``; the
  scrape token, or a login that may read the runs), and
  ``POST /api/migrations/<run_id>/{pause,resume,speed}`` on a takeover's
  background copy, through Cinder (``os-async_migration_copy``: the
  destination's cinder-volume asks its driver), and ``abandon`` for
  a mirror-mode copy before its switch-over (``flow.abandon``; the run is
  then marked failed with a note saying who and what was done);
* the page is an entry "Volume migrations" of the UI's Browse menu.

Airflow mounts plugin apps without any authentication. Every route here
asks for Airflow's own login (the UI's ``_token`` cookie, or a bearer token)
and the permission on the ``volume_migration`` DAG: to read its runs for the
GETs, to change them for the POSTs (a viewer may watch, not pause). A
request without a valid login is refused with 401 (the page redirects to the
login page instead), one without the permission with 403. A POST must carry
a JSON body, which a form on another site cannot send.

Progress comes from Cinder: the migration's view for a takeover's copy (its
destination's cinder-volume asked at each refresh), the volume's metadata for
a host copy (reported by the task, ``include/migration/cinder_progress.py``).
Airflow holds no array credentials for either.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from include.backends.base import MigrationProgress
from include.backends.features import Features
from include.cinder_plugin.names import PROGRESS_KEY
from include.migration.copy_watch import judge_copy
from include.migration.errors import CinderError, MigrationRefused
from include.migration.metrics import ScrapeFacts, render
from include.migration.notices import run_url
from include.migration.operator_rows import (
    RUNNING_RUN_STATES,
    Control,
    MigrationRow,
    RebalanceRow,
    RowFilter,
    RunFacts,
    array_copy_running,
    controls_for,
    host_copy_running,
    migration_row,
    rebalance_row,
)
from include.migration.steps import AUDIT_DAG, MIGRATION_DAG, REBALANCE_DAG, AuditStep, RebalanceStep, Step
from plugins.control_trail import record_control, trails

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("operator_view.html")
RECENT_RUNS = 50  # the latest runs shown, besides every run still going
RECENT_REBALANCES = 10
FILTER_SCAN_RUNS = 1000  # a filtered list looks among this many latest runs


# ---- who may do what ---------------------------------------------------------------------------
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def _may(method: str) -> Callable[..., Awaitable[Any]]:
    """A dependency: the logged-in user (bearer token or the UI's cookie) with ``method`` on the migration DAG."""

    async def dependency(request: Request, creds: Credentials) -> Any:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

        try:
            user = await get_user(request, None, creds)
        except HTTPException as exc:  # no token, an expired or an invalid one
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, f"log in to Airflow first: {exc.detail}", {"WWW-Authenticate": "Bearer"}
            ) from None
        allowed = get_auth_manager().is_authorized_dag(
            method=method, access_entity=DagAccessEntity.RUN, details=DagDetails(id=MIGRATION_DAG), user=user
        )
        if not allowed:
            action = "read" if method == "GET" else "change"
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"{user.get_name()} may not {action} {MIGRATION_DAG} runs")
        return user

    return dependency


METRICS_TOKEN_FILE = "VOLUME_MIGRATION_METRICS_TOKEN_FILE"  # the api-server's environment: the scrape token's file


def scrape_token() -> str | None:
    """The token Prometheus may scrape ``/metrics`` with (``METRICS_TOKEN_FILE``), or None when none is set."""
    path = os.environ.get(METRICS_TOKEN_FILE)
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        log.warning("the metrics scrape token cannot be read from %s: %s", path, exc)
        return None


async def _scraper(request: Request, creds: Credentials) -> Any:
    """Prometheus with the scrape token (a bearer token, compared in constant time), or a user who may read the
    migration DAG's runs (as the view's GETs)."""
    token = scrape_token()
    if token and creds is not None and hmac.compare_digest(creds.credentials.encode(), token.encode()):
        return "prometheus"
    return await _may("GET")(request, creds)


Reader = Annotated[Any, Depends(_may("GET"))]
Scraper = Annotated[Any, Depends(_scraper)]
Operator = Annotated[Any, Depends(_may("PUT"))]  # as clearing a run in Airflow's own API


# ---- what the runs are -------------------------------------------------------------------------
def _name(state: Any) -> str:
    """A run's or task's state as text (Airflow's enums, or None for a task never scheduled: "none")."""
    return str(getattr(state, "value", state) or "none")


def _xcoms(session: Any, dag_id: str, run_ids: list[str], keys: tuple[str, ...]) -> list[tuple[str, str, str, Any]]:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    query = select(XComModel.run_id, XComModel.task_id, XComModel.key, XComModel.value).where(
        XComModel.dag_id == dag_id, XComModel.run_id.in_(run_ids), XComModel.key.in_(keys)
    )
    return [(r.run_id, r.task_id, r.key, XComModel.deserialize_value(r)) for r in session.execute(query)]


def read_runs(session: Any, dag_id: str, limit: int, run_ids: list[str] | None = None) -> list[Any]:
    """The latest ``limit`` runs of ``dag_id`` and every one still going (or exactly ``run_ids``), newest first."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import or_, select

    query = select(DagRun).where(DagRun.dag_id == dag_id)
    if run_ids is not None:
        return list(session.scalars(query.where(DagRun.run_id.in_(run_ids))))
    latest = select(DagRun.id).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(limit)
    going = DagRun.state.in_(tuple(RUNNING_RUN_STATES))
    return list(session.scalars(query.where(or_(DagRun.id.in_(latest), going)).order_by(DagRun.id.desc())))


def run_facts(session: Any, runs: list[Any]) -> list[RunFacts]:
    """What ``operator_rows`` needs of each ``volume_migration`` run: task states, plan, recorded failures."""
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    from plugins.migration_runtime import FAILURE_KEY, PLAN_KEY

    run_ids = [run.run_id for run in runs]
    if not run_ids:
        return []
    states: dict[str, dict[str, str]] = {run_id: {} for run_id in run_ids}
    ends: dict[str, dict[str, Any]] = {run_id: {} for run_id in run_ids}
    query = select(TaskInstance.run_id, TaskInstance.task_id, TaskInstance.state, TaskInstance.end_date).where(
        TaskInstance.dag_id == MIGRATION_DAG, TaskInstance.run_id.in_(run_ids)
    )
    for run_id, task_id, state, end_date in session.execute(query):
        states[run_id][task_id] = _name(state)
        if end_date is not None:
            ends[run_id][task_id] = end_date
    plans: dict[str, dict[str, Any]] = {}
    failures: dict[str, list[str]] = {run_id: [] for run_id in run_ids}
    order = list(Step)
    found = _xcoms(session, MIGRATION_DAG, run_ids, (PLAN_KEY, FAILURE_KEY))
    for run_id, task_id, key, value in sorted(found, key=lambda x: order.index(x[1]) if x[1] in order else 99):
        if key == PLAN_KEY and task_id == Step.VALIDATE_AND_LOCK and isinstance(value, dict):
            plans[run_id] = value
        elif key == FAILURE_KEY and value:
            failures[run_id].append(str(value))
    return [
        RunFacts(
            run_id=run.run_id,
            state=_name(run.state),
            conf=dict(run.conf or {}),
            task_states=states[run.run_id],
            plan=plans.get(run.run_id),
            failures=failures[run.run_id],
            started=run.start_date,
            ended=run.end_date,
            task_ended=ends[run.run_id],
        )
        for run in runs
    ]


# ---- where the copies are ----------------------------------------------------------------------
@functools.cache
def _cinder() -> Any:
    """One Cinder hook for the view's reads (its Keystone token is reused, renewed when it expires)."""
    from plugins.migration_runtime import progress_cinder

    return progress_cinder()


def progress_of(facts: RunFacts) -> MigrationProgress | None:
    """The copy's progress now: a takeover's as its destination's cinder-volume says (the migration's view in
    Cinder, ``copy_watch.judge_copy``), the host copy's last report in Cinder."""
    plan = facts.plan
    try:
        if plan and array_copy_running(facts):
            return judge_copy(_cinder().migration(plan["volume_id"])).progress
        if plan and host_copy_running(facts):
            line = (_cinder().get_volume(plan["volume_id"]).get("metadata") or {}).get(PROGRESS_KEY)
            return MigrationProgress.parse(line) if line else None
    except (CinderError, ValueError) as exc:
        log.warning("progress of run %s unavailable: %s", facts.run_id, exc)
    return None


FEATURES_TTL_S = 60.0  # what a backend's driver offers is asked of Cinder again after this long
_features: dict[str, tuple[float, Features]] = {}


def features_of(facts: RunFacts, known: dict[str, Features | None]) -> Features | None:
    """What the driver of a running takeover's destination offers: asked of Cinder at most once a minute per
    backend (and once per request, in ``known``, when it cannot say); None when there is no such copy or Cinder
    cannot say now."""
    if not (facts.plan and array_copy_running(facts)):
        return None
    backend = facts.plan["dest_host"].split("#", 1)[0]
    cached = _features.get(backend)
    if cached and time.monotonic() - cached[0] < FEATURES_TTL_S:
        return cached[1]
    if backend not in known:
        try:
            known[backend] = Features.from_json(_cinder().backend_features(backend))
            _features[backend] = (time.monotonic(), known[backend])
        except CinderError as exc:
            log.warning("what the driver of %s offers is unknown now: %s", backend, exc)
            known[backend] = None
    return known[backend]


def migration_rows(session: Any, limit: int = RECENT_RUNS, wanted: RowFilter | None = None) -> list[MigrationRow]:
    """The latest ``limit`` runs and every one still going; with filters (``wanted``), the latest ``limit`` runs
    that match among the latest ``FILTER_SCAN_RUNS``."""
    known: dict[str, Features | None] = {}
    wanted = wanted or RowFilter()
    runs = read_runs(session, MIGRATION_DAG, limit if wanted.empty else FILTER_SCAN_RUNS)
    if wanted.state:
        runs = [run for run in runs if _name(run.state) == wanted.state]
    facts = run_facts(session, runs)
    kept = trails(session, [f.run_id for f in facts])
    rows = []
    for f in facts:
        trail = kept.get(f.run_id, ())
        if not wanted.empty and not wanted.matches(migration_row(f, trail=trail)):  # filtered before any Cinder call
            continue
        rows.append(migration_row(f, progress_of(f), features_of(f, known), trail))
    return rows if wanted.empty else rows[:limit]  # unfiltered: the latest limit and every one still going


def last_audit(session: Any) -> dict[str, Any] | None:
    """The last audit that ended: its run, state, end and findings (its find step's output)."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    query = select(DagRun).where(DagRun.dag_id == AUDIT_DAG, DagRun.end_date.is_not(None))
    for run in session.scalars(query.order_by(DagRun.end_date.desc()).limit(10)):
        found = [v for _, task_id, _, v in _xcoms(session, AUDIT_DAG, [run.run_id], ("return_value",))
                 if task_id == AuditStep.FIND and isinstance(v, list)]  # fmt: skip
        if found:
            findings = [f for f in found[0] if isinstance(f, dict)]
            return {"run_id": run.run_id, "state": _name(run.state), "ended": run.end_date,  # ISO in the JSON
                    "run_path": run_url("", AUDIT_DAG, run.run_id), "findings": findings}  # fmt: skip
    return None


def rebalance_rows(session: Any, limit: int = RECENT_REBALANCES) -> list[RebalanceRow]:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import func, select

    from include.migration.dispatch import MOVE_RUN_PREFIX, rebalance_of

    rows = []
    runs = read_runs(session, REBALANCE_DAG, limit)
    outputs: dict[tuple[str, str], Any] = {
        (run_id, task_id): value
        for run_id, task_id, _, value in _xcoms(session, REBALANCE_DAG, [r.run_id for r in runs], ("return_value",))
    }
    for run in runs:
        query = (
            select(DagRun.run_id, DagRun.state)
            .where(DagRun.dag_id == MIGRATION_DAG, DagRun.run_id.like(f"{MOVE_RUN_PREFIX}%"))
            .where(func.substr(DagRun.run_id, -len(run.run_id)) == run.run_id)
        )
        moves: dict[str, int] = {}
        for run_id, state in session.execute(query):
            if rebalance_of(run_id) == run.run_id:
                key = _name(state)
                moves[key] = moves.get(key, 0) + 1
        plan, results = outputs.get((run.run_id, RebalanceStep.PLAN)), outputs.get((run.run_id, RebalanceStep.MIGRATE))
        rows.append(rebalance_row(run.run_id, _name(run.state), run.start_date, run.end_date, dict(run.conf or {}),
                                  moves, plan, results))  # fmt: skip
    return rows


# ---- what Prometheus scrapes -------------------------------------------------------------------
METRICS_RUNS = 5000  # the latest volume_migration runs counted (every one still going too)


def scrape_facts(session: Any) -> ScrapeFacts:
    """The runs, the copies running now, the ended rebalances' moves and the last audit's findings."""
    runs = run_facts(session, read_runs(session, MIGRATION_DAG, METRICS_RUNS))
    progress = {f.run_id: p for f in runs if (p := progress_of(f)) is not None}
    ended = ("success", "failed")
    rebalances = [r.run_id for r in read_runs(session, REBALANCE_DAG, METRICS_RUNS) if _name(r.state) in ended]
    moves = [
        str(move.get("outcome"))
        for _, task_id, _, value in _xcoms(session, REBALANCE_DAG, rebalances, ("return_value",))
        if task_id == RebalanceStep.MIGRATE and isinstance(value, list)
        for move in value
        if isinstance(move, dict)
    ]
    audit = last_audit(session)
    audit_kinds = [str(f.get("kind")) for f in audit["findings"]] if audit else None
    audit_at = audit["ended"] if audit else None
    return ScrapeFacts(runs, progress, moves, audit_kinds, audit_at)


# ---- the app -----------------------------------------------------------------------------------
class ControlBody(BaseModel):
    speed_mib: int | None = Field(default=None, ge=0, description="for speed: MiB/s, 0 = unlimited")


app = FastAPI(title="Volume migrations", description="Migrations and rebalances of Cinder volumes, and their copies")


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request, creds: Credentials) -> Any:
    try:
        await _may("GET")(request, creds)
    except HTTPException as exc:
        if exc.status_code != status.HTTP_401_UNAUTHORIZED:
            raise
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status.HTTP_303_SEE_OTHER)
    return HTMLResponse(PAGE.read_text())


@app.get("/api/migrations")
def list_migrations(
    user: Reader, session: SessionDep, limit: int = RECENT_RUNS, volume: str = "", pool: str = "", state: str = "",
    since: datetime | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The latest runs of volume_migration (and every one still going) that the filters match (``volume``: a part
    of its id, ``pool``: a part of the source's or destination's pool, ``state``: the run's, ``since``: started at
    or after), the latest of volume_rebalance, newest first, and the last audit's findings."""
    limit = max(1, min(limit, 500))
    wanted = RowFilter(volume.strip(), pool.strip(), state.strip(), since)
    return {
        "migrations": [row.to_json() for row in migration_rows(session, limit, wanted)],
        "rebalances": [row.to_json() for row in rebalance_rows(session)],
        "audit": last_audit(session),
    }


@app.get("/metrics", include_in_schema=False)
def metrics(scraper: Scraper, session: SessionDep) -> Response:
    """Prometheus's text format (``include/migration/metrics.py``): with the scrape token or an Airflow login."""
    return Response(render(scrape_facts(session)), media_type=CONTENT_TYPE_LATEST)


@app.post("/api/migrations/{run_id}/{control}")
def control_copy(
    run_id: str, control: Control, body: ControlBody, user: Operator, session: SessionDep
) -> dict[str, Any]:
    """Pause, resume or re-pace the background copy of a running takeover, or abandon a mirror before its
    switch-over; 409 when that does not apply now. Each one, done or refused, goes to Airflow's audit log."""
    facts = run_facts(session, read_runs(session, MIGRATION_DAG, 1, [run_id]))
    if not facts:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {MIGRATION_DAG} run {run_id}")
    what = f"{control} to {body.speed_mib} MiB/s" if control is Control.SPEED else str(control)
    try:
        done = _control(facts[0], control, body, user, session)
    except HTTPException as exc:
        record_control(session, run_id, user, what, f"refused (HTTP {exc.status_code}): {exc.detail}")
        raise
    result = done.get("done") or (done.get("progress") or {}).get("state") or "ok"
    record_control(session, run_id, user, what, f"done: {result}")
    return done


def _control(run: RunFacts, control: Control, body: ControlBody, user: Any, session: Any) -> dict[str, Any]:
    """``control`` on ``run``'s copy, through Cinder; HTTPException when it does not apply or Cinder refuses."""
    run_id = run.run_id
    progress = progress_of(run)
    allowed = controls_for(run, progress, features_of(run, {}))
    if control not in allowed:
        now = f"the copy is {progress.state.value}" if progress else "no array copy of this run is running"
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot {control} run {run_id}: {now}")
    if control is Control.SPEED and body.speed_mib is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "speed needs speed_mib (MiB/s, 0 = unlimited)")
    assert run.plan is not None  # array_copy_running
    if control is Control.ABANDON:
        return abandon_run(session, run, user)
    from plugins import migration_runtime as rt

    volume_id, speed = run.plan["volume_id"], body.speed_mib if control is Control.SPEED else None
    try:
        after = rt.cinder().copy_control(volume_id, control.value, speed)
    except CinderError as exc:
        code = status.HTTP_409_CONFLICT if exc.status in (400, 409) else status.HTTP_502_BAD_GATEWAY
        raise HTTPException(code, f"{run.plan['dest_backend']} refused {control}: {exc}") from None
    pace = f" to {body.speed_mib} MiB/s" if control is Control.SPEED else ""
    log.warning("%s: %s%s of run %s (volume %s on %s)", user.get_name(), control, pace, run_id, volume_id,
                run.plan["dest_backend"])  # fmt: skip
    return {"run_id": run_id, "control": control.value, "progress": after, "by": user.get_name()}


def abandon_run(session: Any, run: RunFacts, user: Any) -> dict[str, Any]:
    """``flow.abandon`` (the volume back on its source, the target deleted), then the run failed with a note."""
    from include.migration import flow
    from plugins import migration_runtime as rt

    assert run.plan is not None
    reason = f"abandoned by {user.get_name()} in the operator view, before the switch-over"
    try:
        done = flow.abandon(flow.Plan.from_json(run.plan), rt.cinder(), reason)
    except MigrationRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot abandon run {run.run_id}: {exc}") from None
    except CinderError as exc:  # the retry of the same action finishes a partial abandon
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"abandon of run {run.run_id} stopped: {exc}") from None
    end_run(session, run.run_id, f"{reason}: {done}", user)
    log.warning("%s: run %s %s", user.get_name(), run.run_id, done)
    return {"run_id": run.run_id, "control": Control.ABANDON.value, "done": done, "by": user.get_name()}


def end_run(session: Any, run_id: str, note: str, user: Any) -> None:
    """Mark the run failed with a note, as Airflow's own PATCH of a run does (its unfinished tasks end too)."""
    from airflow.api_fastapi.common.dagbag import create_dag_bag, get_dag_for_run
    from airflow.api_fastapi.core_api.datamodels.dag_run import DagRunMutableStates
    from airflow.api_fastapi.core_api.services.public.dag_run import patch_dag_run_note, patch_dag_run_state
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == MIGRATION_DAG, DagRun.run_id == run_id))
    patch_dag_run_note(dag_run=dag_run, note=note[:1000], user=user)
    dag = get_dag_for_run(create_dag_bag(), dag_run, session=session)
    patch_dag_run_state(dag=dag, dag_run=dag_run, state=DagRunMutableStates.FAILED, session=session)
