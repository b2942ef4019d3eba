"""A sample of the fault matrix (lab/faults.py, bench/faults.py): one trial per phase, each judged in full."""

from __future__ import annotations

import pytest

from include.migration.steps import AUDIT_DAG
from lab.faults import CEPH_COMPONENTS, Matrix, Phase, plan_trials

pytestmark = pytest.mark.integration

SEED = 12  # the README's table of the whole matrix uses the same seed


def sample() -> list:
    """The first SIGKILL trial of each phase in the seed's order (the SIGSTOP ones take 40 s more each); for the
    host copy into Ceph, the first that kills a Ceph daemon. Not the Ceph takeover's phase (its manager killed
    mid-copy is test_volume_migration_ceph.py's) nor the rollback's (the rollback itself is test_volume_migration's,
    after a failure): bench/faults.py runs them, and CI stays under its 45 minutes."""
    first = {}
    phases = [phase for phase in Phase if phase not in (Phase.CEPH_TAKEOVER, Phase.ROLLBACK)]
    for trial in plan_trials(SEED, phases=phases):
        ceph_daemon = trial.phase is not Phase.HOST_COPY_CEPH or trial.component in CEPH_COMPONENTS
        if trial.signal == "KILL" and ceph_daemon:
            first.setdefault(trial.phase, trial)
    return [first[phase] for phase in phases]


@pytest.fixture(scope="module")
def matrix(lab, services, ceph, cinder, airflow, admin):
    airflow.wait_dags((AUDIT_DAG,), 120)

    def restart():  # what lab up does, on the test session's lab
        lab.up()
        services.up()
        ceph.up()
        cinder.up()
        airflow.up()

    return Matrix(lab, services, cinder, airflow, admin, ceph, restart)


@pytest.mark.executors("local")
@pytest.mark.parametrize("trial", sample(), ids=lambda t: f"{t.component}-{t.phase}")
def test_a_fault_in_each_phase_loses_nothing_and_leaves_nothing_stuck(matrix, trial):
    outcome = matrix.run(trial)
    assert outcome.ok, outcome.to_json()
