"""The fault matrix: one migration per trial, one component killed (or frozen) in one of its phases, judged.

A trial creates a 1 GiB Cinder volume with data, starts a ``volume_migration``
run whose path goes through the trial's phase, waits until that phase's task
runs, waits a random part of the phase's window, and then SIGKILLs the
component's whole process tree (an array can also be frozen with SIGSTOP for
longer than the array client's timeout, then thawed). It restarts the lab the
way an operator would, with ``lab up`` (which starts whatever is not running).
From the moment the volume is attachable until the run ends, a client
attached through Cinder reads and writes it at random and flushes. When the
connection breaks, it reconnects and checks the whole volume against what it
wrote.

The trial is judged as follows:

- ``run``: the run ends in ``success``, or it ends ``failed`` and clearing the
  run makes it succeed.
- ``lost``: sectors that hold neither the data of the last flush nor a write
  since. They are counted after every reconnect and once at the end on the
  destination.
- ``bad reads``: data that was never written.
- ``stuck``: the volume is still locked after the trial.
- ``orphans``: what the audit (``include/migration/audit.py``) finds in the
  lab before its repair, and what is left after it.

Everything is bounded in time: a trial that overruns is reported as such.
Lab equipment, never shipped: ``bench/faults.py`` is its command, and
``tests/integration/test_faults.py`` runs one trial per phase (for the host
copy into Ceph, one that kills a Ceph daemon).
"""

from __future__ import annotations

import contextlib
import enum
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from include.backends.base import GiB, MiB
from include.backends.errors import NotFound
from include.migration.audit import find
from include.migration.audit_flow import read
from include.migration.errors import CinderError
from include.migration.flow import lun_of
from include.migration.steps import AUDIT_DAG, MIGRATION_DAG, Step
from lab import verify
from lab.attached_client import AttachedClient
from lab.env import PROJECT_ROOT
from lab.errors import LabError
from lab.fill import create_volumes, delete_volumes, seed
from lab.lab import Lab
from lab.procutil import parent_pid, pid_alive, process_tree, wait_until
from lab.services.airflow import AirflowLab
from lab.services.airflow_api import AirflowError
from lab.services.ceph import MGR, MON, OSD, CephLab
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.cinder import CINDER_HOST, CinderLab
from lab.services.openstack import Services

SETTLED = ("success", "failed")
RUN_TIMEOUT = 420.0  # from the restart to the run's end (a dead worker is noticed after 30 s, retries wait 10 s)


class Phase(enum.StrEnum):
    VALIDATE = "validate_and_lock"
    TAKEOVER = "takeover"
    ATTACHABLE_WAIT = "attachable_wait"
    COMMIT = "commit"
    HOST_COPY = "host_copy"
    HOST_COPY_CEPH = "host_copy_ceph"
    ROLLBACK = "rollback"
    CEPH_TAKEOVER = "ceph_takeover"


@dataclass(frozen=True)
class PhasePlan:
    step: Step  # the task that runs during the phase
    source: str  # arrays
    dest: str
    conf: dict[str, Any]  # the run's params besides volume_id and dest_host
    window_s: float  # the kill comes at a random time in [0, window_s] after the task is seen running
    dest_pool: str = "pool1"
    fill_every: int = 32 * MiB  # the volume holds 1 MiB of random data in every fill_every bytes

    @property
    def dest_host(self) -> str:
        return f"{CINDER_HOST}@{self.dest}#{self.dest_pool}"


TAKEOVER_CONF = {"speed_mib": 64}  # a stream copy reads the whole 1 GiB: about 16 s
PHASES: dict[Phase, PhasePlan] = {
    Phase.VALIDATE: PhasePlan(Step.VALIDATE_AND_LOCK, "beta", "alpha", TAKEOVER_CONF, 0.8),
    Phase.TAKEOVER: PhasePlan(Step.TARGET_TAKEOVER, "beta", "alpha", TAKEOVER_CONF, 0.8),
    Phase.ATTACHABLE_WAIT: PhasePlan(Step.WAIT_FOR_COPY, "beta", "alpha", TAKEOVER_CONF, 3.0),
    Phase.COMMIT: PhasePlan(Step.COMMIT, "beta", "alpha", TAKEOVER_CONF, 0.8),
    Phase.HOST_COPY: PhasePlan(Step.HOST_COPY, "alpha", "gamma", {"speed_mib": 8}, 3.0),
    # a lab array's NBD volume into Ceph's RBD through Cinder and os-brick (neither driver moves it)
    Phase.HOST_COPY_CEPH: PhasePlan(Step.HOST_COPY, "gamma", "ceph-hdd", {"speed_mib": 8}, 3.0, "ceph-hdd"),
    # the operator gives a slow host copy up (marks it failed): rollback runs, and the fault hits it
    Phase.ROLLBACK: PhasePlan(Step.ROLLBACK, "beta", "alpha", {"force_host_copy": True, "speed_mib": 1}, 0.8),
    # RBD live migration between the Ceph pools (AsyncRBDDriver): full of data, so that the Ceph manager's copy
    # lasts a few seconds of the wait
    Phase.CEPH_TAKEOVER: PhasePlan(Step.WAIT_FOR_COPY, "ceph-hdd", "ceph-ssd", {}, 3.0, "ceph-ssd", MiB),
}

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "worker")
CINDER_COMPONENTS = ("cinder-api", "cinder-scheduler", "cinder-volume")
SERVICE_COMPONENTS = ("keystone", "rabbitmq", "postgres")
ARRAY_COMPONENTS = ("source-array", "target-array")
CEPH_COMPONENTS = {"ceph-mon": MON, "ceph-mgr": MGR, "ceph-osd": OSD}  # -> the daemon's name in CephLab
COMPONENTS = (*AIRFLOW_COMPONENTS, *CINDER_COMPONENTS, *SERVICE_COMPONENTS, *ARRAY_COMPONENTS, *CEPH_COMPONENTS)
SIGNALS = ("KILL", "STOP")  # STOP: arrays only, frozen past the array client's timeout
FREEZE_S = 40.0  # longer than include.backends.array_api.DEFAULT_TIMEOUT (30 s)


@dataclass(frozen=True)
class Trial:
    index: int
    component: str
    phase: Phase
    signal: str
    delay_s: float  # after the phase's task is seen running
    seed: int

    @property
    def name(self) -> str:
        return f"#{self.index} {self.component} {self.signal} in {self.phase}"


def faults_of(phase: Phase, components: list[str] | None = None) -> list[tuple[str, str]]:
    """The (component, signal) faults of a phase: SIGKILL for every component, SIGSTOP for the arrays; Ceph's
    daemons only where the phase's volume goes to or comes from Ceph, and no lab array on an end that is Ceph."""
    return [fault for fault in _dealt(phase, components) if _applies(phase, fault[0])]


def _dealt(phase: Phase, components: list[str] | None) -> list[tuple[str, str]]:
    plan = PHASES[phase]
    with_ceph = plan.source in CEPH_POOLS or plan.dest in CEPH_POOLS
    return [(c, s) for c in components or COMPONENTS for s in SIGNALS
            if (s == "KILL" or c in ARRAY_COMPONENTS) and (with_ceph or c not in CEPH_COMPONENTS)]  # fmt: skip


def _applies(phase: Phase, component: str) -> bool:
    """A lab array is a component of the phase unless that end of it is Ceph (whose daemons are the components)."""
    plan = PHASES[phase]
    end = {"source-array": plan.source, "target-array": plan.dest}.get(component)
    return end not in CEPH_POOLS


def plan_trials(seed: int, count: int | None = None, phases: list[Phase] | None = None,
                components: list[str] | None = None) -> list[Trial]:  # fmt: skip
    """The matrix in rounds: each round gives every phase another of its faults (a component and a signal), so
    that any prefix spreads over the phases and the faults alike; once every phase had all its faults, every cell
    came once. ``count`` (default: every cell once) cycles on. The faults' order and the delays are drawn from
    ``seed``."""
    rng = random.Random(seed)
    phases = phases or list(Phase)
    faults = {phase: _dealt(phase, components) for phase in phases}
    for phase in phases:  # shuffled, then filtered: a seed deals the other phases what it dealt before the filter
        rng.shuffle(faults[phase])
        faults[phase] = [fault for fault in faults[phase] if _applies(phase, fault[0])]
    rounds = max(len(f) for f in faults.values())
    cells = [(faults[phase][(r + j) % len(faults[phase])], phase) for r in range(rounds)
             for j, phase in enumerate(phases) if r < len(faults[phase])]  # fmt: skip
    trials = []
    for i in range(count or len(cells)):
        (component, sig), phase = cells[i % len(cells)]
        delay = round(rng.uniform(0, PHASES[phase].window_s), 2)
        trials.append(Trial(i + 1, component, phase, sig, delay, seed * 1000 + i))
    return trials


@dataclass
class Outcome:
    trial: Trial
    landed: str = ""  # where the fault landed: the phase's task state just before it
    run: str = ""  # success | failed -> cleared -> success | ... | TIMEOUT
    failed_at: str = ""  # the failed tasks before the clear
    state_after_failure: str = ""  # status/migration_status/host of the volume when the run failed
    client_ops: int = 0
    disruptions: int = 0
    lost: int = 0
    bad_reads: int = 0
    stuck: bool = False
    orphans_before: int = 0
    orphans_after: int = 0
    restart_s: float = 0.0
    seconds: float = 0.0
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.run.endswith("success")
            and self.lost == 0
            and self.bad_reads == 0
            and not self.stuck
            and self.orphans_after == 0
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "trial": {**asdict(self.trial), "phase": str(self.trial.phase)}, "ok": self.ok}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        fields = {k: v for k, v in data.items() if k not in ("trial", "ok")}
        return cls(Trial(**{**data["trial"], "phase": Phase(data["trial"]["phase"])}), **fields)


class Matrix:
    """Runs trials on a lab that is up (arrays, services, Cinder, Airflow on the LocalExecutor)."""

    def __init__(self, lab: Lab, services: Services, cinder_lab: CinderLab, airflow: AirflowLab, cinder: Any,
                 ceph: CephLab, restart: Callable[[], None] | None = None,
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
        """``restart``: start what is not running (default: ``lab up`` on ``lab.root``, in a process of its own)."""
        self.lab, self.services, self.cinder_lab, self.airflow, self.ceph = lab, services, cinder_lab, airflow, ceph
        self.cinder, self.api, self.log = cinder, airflow.api, log
        self.restart = restart or self.lab_up

    # ---- one trial -------------------------------------------------------------------------
    def run(self, trial: Trial) -> Outcome:
        outcome = Outcome(trial)
        started = time.monotonic()
        self.log(f"trial {trial.name}, {trial.delay_s} s into it")
        try:
            self._trial(trial, outcome)
        except Exception as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            self.log(f"  ERROR {outcome.error}")
            self._ensure_up(outcome)
        outcome.seconds = round(time.monotonic() - started, 1)
        failed = f" (failed at {outcome.failed_at}: {outcome.state_after_failure})" if outcome.failed_at else ""
        self.log(f"  -> {'ok' if outcome.ok else 'NOT OK'}: fault landed with the task {outcome.landed}; run "
                 f"{outcome.run}{failed}; client {outcome.client_ops} ops, {outcome.disruptions} disruptions; lost "
                 f"{outcome.lost}, bad reads {outcome.bad_reads}, stuck {outcome.stuck}, orphans "
                 f"{outcome.orphans_before}->{outcome.orphans_after}; restart {outcome.restart_s} s, "
                 f"{outcome.seconds} s")  # fmt: skip
        return outcome

    def _trial(self, trial: Trial, outcome: Outcome) -> None:
        plan = PHASES[trial.phase]
        rng = random.Random(trial.seed)
        volume_id, model = self._volume(plan.source, rng, plan.fill_every)
        dest = plan.dest_host
        client = None if plan.step is Step.ROLLBACK else AttachedClient(self.cinder, volume_id, model, rng, RUN_TIMEOUT)
        run_id = self._call(lambda: self.api.trigger(MIGRATION_DAG, {"volume_id": volume_id, "dest_host": dest,
                                                                      **plan.conf}))  # fmt: skip
        if client:
            client.start()
        try:
            if trial.phase is Phase.ROLLBACK:
                self._wait_task(run_id, Step.HOST_COPY, ("running",), 120)
                self._call(lambda: self.api.mark_task(MIGRATION_DAG, run_id, Step.HOST_COPY, "failed"))
            outcome.landed = self._wait_task(run_id, plan.step, ("running", "deferred"), 180)
            time.sleep(trial.delay_s)
            outcome.landed = self._task_state(run_id, plan.step) or outcome.landed
            self._fault(trial, plan, run_id)
            restart = time.monotonic()
            self._ensure_up(outcome)
            outcome.restart_s = round(time.monotonic() - restart, 1)
            self._settle(run_id, outcome, volume_id)
        finally:
            if client:
                client.detach()
                outcome.client_ops, outcome.disruptions = client.ops, client.disruptions
                outcome.lost, outcome.bad_reads = client.lost, client.bad_reads
                outcome.notes += client.errors
        self._judge_volume(volume_id, dest, plan, model, outcome)
        self._audit(outcome)
        self._delete(volume_id)

    # ---- making and checking the volume --------------------------------------------------
    def _volume(self, backend: str, rng: random.Random, every: int) -> tuple[str, verify.DataModel]:
        """A 1 GiB volume on ``backend`` (a lab array or a Ceph pool) with 1 MiB of random data in every ``every``
        bytes: (id, the model of its content)."""
        volume_id = create_volumes(self.cinder, 1, backend, prefix="fault-trial", timeout=120)[0]["id"]
        return volume_id, seed(self.lab, self.ceph, backend, f"volume-{volume_id}", rng, GiB, every)

    def _judge_volume(self, volume_id: str, dest: str, plan: PhasePlan, model: verify.DataModel,
                      outcome: Outcome) -> None:  # fmt: skip
        volume = self.cinder.get_volume(volume_id)
        where = (volume["status"], volume.get("migration_status"), volume.get("os-vol-host-attr:host"))
        outcome.stuck = volume["status"] == "maintenance" or where[1] in ("starting", "migrating_attachable")
        if outcome.run.endswith("success") and where != ("available", "success", dest):
            outcome.notes.append(f"run succeeded but the volume is {where}")
            outcome.stuck = True
        outcome.lost += len(model.crash_violations(self._content(plan.dest if where[2] == dest else plan.source,
                                                                 lun_of(volume))))  # fmt: skip
        source_lun = f"volume-{volume_id}"  # a host copy's volume ends on the destination volume's LUN (name id)
        moved = where[2] == dest and plan.source != plan.dest  # Cinder's completion deletes the source, not waiting
        if moved and not wait_until(lambda: not self._has_lun(plan.source, source_lun), 60, 0.5):
            outcome.notes.append(f"the source LUN {source_lun} is still on {plan.source} (the audit counts it)")

    def _content(self, backend: str, lun: str) -> bytes:
        """The whole volume ``lun`` as ``backend`` holds it: an RBD image of the lab's Ceph, or a lab array's LUN."""
        if backend in CEPH_POOLS:
            return self.ceph.read_image(CEPH_POOLS[backend], lun, 0, GiB)
        return verify.read_lun(self.lab.backend(backend), lun, GiB)

    def _has_lun(self, array: str, lun: str) -> bool:
        if array in CEPH_POOLS:
            return lun in self.ceph.images(CEPH_POOLS[array])
        try:
            self.lab.backend(array).get_lun(lun)
        except NotFound:
            return False
        return True

    def _delete(self, volume_id: str) -> None:
        delete_volumes(self.cinder, [volume_id])
        wait_until(lambda: volume_id not in {v["id"] for v in self.cinder.list_volumes()}, 60, 0.5)

    # ---- the run ---------------------------------------------------------------------------------
    def _settle(self, run_id: str, outcome: Outcome, volume_id: str) -> None:
        """Wait for the run's end; a failed run is recorded and cleared once, and must then succeed."""
        state = self._wait_run(run_id)
        if state == "failed":
            tis = self._call(lambda: self.api.task_instances(MIGRATION_DAG, run_id))
            outcome.failed_at = ",".join(sorted(t for t, ti in tis.items() if ti["state"] == "failed"))
            v = self.cinder.get_volume(volume_id)
            outcome.state_after_failure = (f"{v['status']}/{v.get('migration_status')}/"
                                           f"{(v.get('os-vol-host-attr:host') or '').split('@')[-1]}")  # fmt: skip
            self._call(lambda: self.api.clear_run(MIGRATION_DAG, run_id))
            state = "failed -> cleared -> " + self._wait_run(run_id)
        outcome.run = state

    def _wait_run(self, run_id: str) -> str:
        found = {"state": "?"}

        def ended() -> bool:
            with contextlib.suppress(AirflowError, OSError):
                found.update(self.api.run(MIGRATION_DAG, run_id))
            return found["state"] in SETTLED

        return found["state"] if wait_until(ended, RUN_TIMEOUT, 1.0) else f"TIMEOUT ({found['state']})"

    def _task_state(self, run_id: str, step: Step) -> str | None:
        with contextlib.suppress(AirflowError, OSError, KeyError):
            return self.api.task_instances(MIGRATION_DAG, run_id)[step]["state"]
        return None

    def _wait_task(self, run_id: str, step: Step, states: tuple[str, ...], timeout: float) -> str:
        seen = {"state": None}

        def reached() -> bool:
            seen["state"] = self._task_state(run_id, step)
            return seen["state"] in states

        if not wait_until(reached, timeout, 0.1):
            raise LabError(f"{step} of run {run_id} never reached {states}: it is {seen['state']}")
        return str(seen["state"])

    def _call(self, fn: Callable[[], Any], timeout: float = 120.0) -> Any:
        """``fn`` again until it answers (a service may be restarting); the last error after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except (AirflowError, CinderError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    # ---- the fault ------------------------------------------------------------------------------
    def _fault(self, trial: Trial, plan: PhasePlan, run_id: str) -> None:
        pids = self._targets(trial.component, plan, run_id)
        if not pids:
            raise LabError(f"no process found for {trial.component}")
        if trial.signal == "STOP":
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(FREEZE_S)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20)

    def _targets(self, component: str, plan: PhasePlan, run_id: str) -> list[int]:
        """The processes the fault hits: the component's whole process tree; for the worker, the LocalExecutor
        worker that runs the phase's task (or, while no task runs, the idle one that reads the task queue)."""
        if component == "worker":
            ti = self._call(lambda: self.api.task_instances(MIGRATION_DAG, run_id))[plan.step]
            task = ti.get("pid") if ti.get("state") == "running" else None
            if task and pid_alive(task):
                return [p for p in (task, parent_pid(task)) if p]
            reader = self.airflow.idle_worker_reading_tasks()
            return [reader] if reader else []
        root = self._root_pid(component, plan)
        return process_tree(root) if root else []

    def _root_pid(self, component: str, plan: PhasePlan) -> int | None:
        if component in AIRFLOW_COMPONENTS:
            return self.airflow.pid(component)
        if component in CINDER_COMPONENTS:
            return self.cinder_lab.pid(component)
        if component == "keystone":
            return self.services.keystone.pid("uwsgi")
        if component == "rabbitmq":
            return self.services.rabbitmq.node_pid()
        if component == "postgres":
            return self.services.postgres.pid()
        if component in CEPH_COMPONENTS:
            return self.ceph.pid(CEPH_COMPONENTS[component])
        return self.lab.pid(plan.source if component == "source-array" else plan.dest)

    def _ensure_up(self, outcome: Outcome) -> None:
        try:
            self.restart()
        except (LabError, subprocess.SubprocessError) as exc:
            outcome.notes.append(f"restart failed: {exc}")
            self.log(f"  restart failed: {exc}")  # printed at once: a trial left hanging behind it says why

    def lab_up(self) -> None:
        """``lab up``, as an operator runs it: starts whatever is not running."""
        cmd = [sys.executable, "-m", "lab.cli", "--root", str(self.lab.root), "up"]
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=PROJECT_ROOT)
        if done.returncode != 0:
            raise LabError(f"lab up failed: {done.stderr.strip()[-500:]}")

    # ---- the audit ------------------------------------------------------------------------------
    def _audit(self, outcome: Outcome) -> None:
        """Inconsistencies in the whole lab; if any, volume_audit repairs what is safe, and they are counted again."""
        found = self.findings()
        outcome.orphans_before = len(found)
        if found:
            outcome.notes += [f"{f.kind} {f.subject}: {f.detail}" for f in found]
            run_id = self._call(lambda: self.api.trigger(AUDIT_DAG, {"repair": True}))
            with contextlib.suppress(AirflowError):
                self.api.wait_run(AUDIT_DAG, run_id, 300)
            wait_until(lambda: not self._live_migrations(), 300, 2.0)  # runs it resumed
            found = self.findings()
        outcome.orphans_after = len(found)

    def _live_migrations(self) -> bool:
        return any(r["state"] in ("queued", "running") for r in self.api.runs(MIGRATION_DAG, limit=20))

    def findings(self) -> list[Any]:
        return find(read(self.cinder, _Runs(self.api)).snapshot)


class _Runs:
    """The audit's view of the runs, from outside Airflow (its REST API)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def state(self, run_id: str) -> str | None:
        try:
            return self.api.run(MIGRATION_DAG, run_id)["state"]
        except AirflowError as exc:
            if exc.status == 404:
                return None
            raise

    def resume(self, run_id: str, conf: dict[str, Any]) -> None:
        raise NotImplementedError("the lab's checks only read")
