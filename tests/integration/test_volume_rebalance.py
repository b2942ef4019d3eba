"""The volume_rebalance DAG end to end, on the real lab.

Volumes are created in beta through Cinder and the rebalance drains beta's
pools onto alpha's, or onto a Ceph pool (a host copy through Cinder, NBD to
RBD), one ``volume_migration`` run per move; between the Ceph pools the move is
ceph-ssd's takeover (RBD live migration). Cinder and the
arrays are sampled every second from outside (``lab.concurrency``): the
limits must hold, a migration started by hand included. Data written before
the run is read back after it.
"""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from include.backends.base import GiB, MiB
from include.migration.errors import CinderError
from include.migration.inventory import read_pools
from lab.concurrency import MigrationSampler
from lab.fill import create_volumes, delete_volumes, lift_quotas
from lab.procutil import wait_until
from lab.services.airflow_api import AirflowError
from lab.services.ceph import POOLS as CEPH_POOLS
from lab.services.cinder import CINDER_HOST
from tests.integration.migration_runs import content_on, has_lun, seed

pytestmark = pytest.mark.integration

REBALANCE = "volume_rebalance"
MIGRATION = "volume_migration"
ALPHA = [f"{CINDER_HOST}@alpha#pool1", f"{CINDER_HOST}@alpha#pool2"]
BETA = [f"{CINDER_HOST}@beta#pool1", f"{CINDER_HOST}@beta#pool2"]
CEPH_HDD, CEPH_SSD = f"{CINDER_HOST}@ceph-hdd#ceph-hdd", f"{CINDER_HOST}@ceph-ssd#ceph-ssd"
SEEDED = 64 * MiB  # of each volume, for the move into Ceph
THRESHOLD = 10  # percent: beta's 40 GiB pools hold 6 of the 12 volumes each (15%) and must drop to 4 GiB
RUN_TIMEOUT = 600


@pytest.fixture
def beta_full(lab, admin):
    """12 volumes of 1 GiB on beta (spread over its two pools by Cinder), deleted afterwards."""
    lift_quotas(admin)
    made, extra = [], []  # extra: volumes a test adds
    try:
        made += create_volumes(admin, 12, "beta", prefix="rebalance")
        stats_current(lab, admin)  # plan on pool stats that count these volumes
        yield made, extra
    finally:
        ids = [v["id"] for v in made + extra]

        def settled(vid):
            v = admin.get_volume(vid)
            return v["status"] == "available" and v["migration_status"] in (None, "success", "error")

        wait_until(lambda: all(settled(i) for i in ids), 300, 2)  # a failed test may leave migrations running
        assert delete_volumes(admin, ids) == []
        assert wait_until(lambda: not any(exists(admin, i) for i in ids), 120, 1)
        stats_current(lab, admin)


def exists(admin, volume_id):
    try:
        admin.get_volume(volume_id)
    except CinderError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def used(admin):
    """Each pool's used ratio, as Cinder reports it now."""
    return {p.name: p.used_ratio for p in read_pools(admin)}


def stats_current(lab, admin, timeout=60):
    """Wait until Cinder's pool stats (the drivers report every few seconds) say what alpha's and beta's arrays say."""

    def current():
        cinder = {p.name: p.free_bytes for p in read_pools(admin)}
        arrays = {
            f"{CINDER_HOST}@{name}#{pool.name}": pool.free_bytes // GiB * GiB
            for name in ("alpha", "beta")
            for pool in lab.backend(name).capabilities().pools
        }
        return all(cinder.get(p) == free for p, free in arrays.items())

    assert wait_until(current, timeout, 1), used(admin)


def volume_states(admin, ids):
    states = {}
    for vid in ids:
        v = admin.get_volume(vid)
        states[vid] = (v["status"], v["migration_status"], v["os-vol-host-attr:host"])
    return states


def migration_runs(api):
    return {r["dag_run_id"]: r for r in api.runs(MIGRATION)}


def logs(api, run_id, task_id):
    ti = api.task_instances(REBALANCE, run_id)[task_id]
    return "\n".join(api.task_log(REBALANCE, run_id, task_id, n) for n in range(1, max(ti["try_number"], 1) + 1))


def test_bad_params_are_refused_with_the_param_named_and_nothing_changes(admin, api, beta_full):
    ids = [v["id"] for v in beta_full[0]]
    before, runs_before = volume_states(admin, ids), set(migration_runs(api))
    # refused by Airflow's API with the form's schema, before any run exists
    for conf, named in (
        ({"threshold": 0}, "threshold"),
        ({"threshold": 100}, "threshold"),
        ({"max_per_source": 0}, "max_per_source"),
        ({"max_per_destination": -1}, "max_per_destination"),
        ({"max_total": 0}, "max_total"),
        ({"max_moves": -1}, "max_moves"),
        ({"max_gib": -5}, "max_gib"),
        ({"speed_mib": -1}, "speed_mib"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"include_pools": ["beta"]}, "include_pools"),
    ):
        with pytest.raises(AirflowError, match=f"HTTP 400: Invalid input for param {named}"):
            api.trigger(REBALANCE, conf)
    # well-formed, but wrong against Cinder or across params: refused by plan, once, before anything changes
    cases = {
        "unknown pool": ({"include_pools": [f"{CINDER_HOST}@beta#pool9"]}, "include_pools: pools Cinder does not know"),
        "included and excluded": ({"include_pools": BETA, "exclude_pools": BETA[:1]},
                                  f"pools both included and excluded: {BETA[0]}"),
        "unknown parameter": ({"colour": "blue"}, "unknown parameters: colour"),
    }  # fmt: skip
    for name, (conf, expected) in cases.items():
        run_id = api.trigger(REBALANCE, conf)
        assert api.wait_run(REBALANCE, run_id, RUN_TIMEOUT)["state"] == "failed", name
        tis = api.task_instances(REBALANCE, run_id)
        assert tis["plan"]["state"] == "failed" and tis["plan"]["try_number"] == 1, (name, tis["plan"])
        assert tis["migrate"]["state"] == "upstream_failed", name
        assert expected in logs(api, run_id, "plan"), name
    assert volume_states(admin, ids) == before
    assert set(migration_runs(api)) == runs_before, "no migration was started"


def test_dry_run_plans_and_changes_nothing(admin, api, beta_full):
    ids = [v["id"] for v in beta_full[0]]
    before, runs_before = volume_states(admin, ids), set(migration_runs(api))
    conf = {"threshold": THRESHOLD, "include_pools": ALPHA + BETA, "dry_run": True}
    run_id = api.trigger(REBALANCE, conf)
    assert api.wait_run(REBALANCE, run_id, RUN_TIMEOUT)["state"] == "success"
    summary = api.xcom(REBALANCE, run_id, "summarize")
    assert summary["dry_run"] is True and summary["counts"].get("planned", 0) >= 2, summary["counts"]
    assert {m["source"] for m in summary["moves"]} <= set(BETA)
    assert {m["destination"] for m in summary["moves"]} <= set(ALPHA)
    assert "rebalance plan, threshold 10.0%" in logs(api, run_id, "plan")
    assert api.task_instances(REBALANCE, run_id)["publish"]["state"] == "skipped", "a dry run emits no event"
    assert volume_states(admin, ids) == before
    assert set(migration_runs(api)) == runs_before


def test_rebalance_holds_the_limits_counts_a_manual_run_and_survives_a_clear(lab, admin, api, beta_full):
    """Limits 1/1/2 with a manual migration in flight; the migrate task cleared mid-run; data read back."""
    made, extra = beta_full
    seeded = {v["id"]: seed(lab, "beta", f"volume-{v['id']}", seed=i) for i, v in enumerate(made[:3])}
    manual = create_volumes(admin, 1, "beta", prefix="manual")[0]
    extra.append(manual)
    manual_model = seed(lab, "beta", f"volume-{manual['id']}", seed=99)
    ids = [v["id"] for v in made] + [manual["id"]]
    limits = {"max_per_source": 1, "max_per_destination": 1, "max_total": 2}
    conf = {"threshold": THRESHOLD, "include_pools": ALPHA + BETA, "speed_mib": 0, **limits}
    with MigrationSampler(admin, lab) as sampler:
        manual_run = api.trigger(MIGRATION, {"volume_id": manual["id"], "dest_host": ALPHA[0], "speed_mib": 32},
                                 note="by hand during a rebalance")  # fmt: skip
        assert wait_until(lambda: manual["id"] in sampler.volume_ids, 120, 0.5), "the manual run never locked"
        run_id = api.trigger(REBALANCE, conf)
        # once this run's first migration is in flight, clear its migrate task: the new try follows it
        assert wait_until(lambda: sampler.volume_ids - {manual["id"]}, 180, 0.5), sampler.table()
        assert api.clear_tasks(REBALANCE, run_id, ["migrate"]) == ["migrate"]
        run = api.wait_run(REBALANCE, run_id, RUN_TIMEOUT)
        assert api.wait_run(MIGRATION, manual_run, RUN_TIMEOUT)["state"] == "success"
        time.sleep(2)  # one more sample after the last migration ended
    print(sampler.table())
    assert run["state"] == "success", api.task_instances(REBALANCE, run_id)
    assert api.task_instances(REBALANCE, run_id)["migrate"]["try_number"] == 2
    assert sampler.samples >= 10 and not sampler.failures, sampler.failures
    assert sampler.peak("total") <= 2 and sampler.peak("off:") <= 1 and sampler.peak("onto:") <= 1, sampler.table()

    summary = api.xcom(REBALANCE, run_id, "summarize")
    moves = {m["volume_id"]: m for m in summary["moves"]}
    listed = set(moves) | {s["volume_id"] for s in summary["skipped"]}
    assert set(ids) <= listed, "every volume is in the summary"
    assert summary["counts"].get("moved", 0) >= 2 and set(summary["counts"]) <= {"moved", "skipped"}, summary
    assert {m["outcome"] for m in moves.values()} == {"moved"}, "the cleared run followed its moves to the end"
    assert manual["id"] not in moves, "the manual migration is the operator's: skipped as migrating"
    mine = [r for r in migration_runs(api) if r.startswith("rebalance__")]
    assert sorted(m["run_id"] for m in moves.values()) == sorted(r for r in mine if r.endswith(run_id))
    assert all(migration_runs(api)[m["run_id"]]["state"] == "success" for m in moves.values())
    events = api.asset_events(REBALANCE, run_id)
    assert len(events) == 1 and events[0]["extra"]["counts"] == summary["counts"], events

    stats_current(lab, admin)
    now = used(admin)
    assert all(now[p] <= THRESHOLD / 100 + 1e-9 for p in BETA), now
    states = volume_states(admin, ids)
    assert all(s[1] in (None, "success") and s[0] == "available" for s in states.values()), "none left locked"
    for vid, model in [*seeded.items(), (manual["id"], manual_model)]:
        array = states[vid][2].split("@")[1].split("#")[0]
        assert model.mismatches(content_on(lab, array, f"volume-{vid}", GiB)) == [], vid


def test_rebalance_moves_volumes_from_a_lab_array_into_a_ceph_pool(lab, ceph, admin, api, beta_full):
    """beta's pools over the threshold, ceph-ssd nearly empty: two moves beta -> ceph-ssd (the host copy through
    Cinder), data read back from the RBD images, the sources gone from beta."""
    made, _ = beta_full
    # every volume seeded (which two move is the planner's choice), on its first 64 MiB: twelve models of 1 GiB
    # each would hold 12 GiB in this process
    models = {v["id"]: seed(lab, "beta", f"volume-{v['id']}", SEEDED, seed=i) for i, v in enumerate(made)}
    conf = {"threshold": THRESHOLD, "include_pools": [*BETA, CEPH_SSD], "max_moves": 2, "speed_mib": 0}
    run_id = api.trigger(REBALANCE, conf)
    run = api.wait_run(REBALANCE, run_id, RUN_TIMEOUT)
    assert run["state"] == "success", api.task_instances(REBALANCE, run_id)
    summary = api.xcom(REBALANCE, run_id, "summarize")
    moves = [m for m in summary["moves"] if m["outcome"] == "moved"]
    assert len(moves) == 2 and summary["counts"].get("moved") == 2, summary
    assert {m["source"] for m in moves} <= set(BETA) and {m["destination"] for m in moves} == {CEPH_SSD}, moves
    assert {m["path"] for m in moves} == {"host_copy"}, moves  # ceph-ssd takes no NBD volume over
    for move in moves:
        vid, image = move["volume_id"], f"volume-{move['volume_id']}"
        assert volume_states(admin, [vid])[vid] == ("available", "success", CEPH_SSD)
        assert models[vid].mismatches(content_on(lab, "ceph-ssd", image, SEEDED, ceph)) == [], vid
        # deleted by its driver (Cinder's completion asks for it without waiting)
        assert wait_until(lambda lun=image: not has_lun(lab, "beta", lun), 60, 0.5), "the source LUN is deleted"


def test_rebalance_moves_between_the_ceph_pools_by_rbd_live_migration(lab, ceph, admin, api, volume):
    """ceph-hdd holds more than ceph-ssd (two volumes full of data): the plan moves one to ceph-ssd by the
    destination's takeover (RBD live migration), and the moved volume's data is read back from ceph-ssd."""
    made = [volume("ceph-hdd"), volume("ceph-hdd")]
    digests = {v["id"]: filled(ceph, "ceph-hdd", f"volume-{v['id']}", i) for i, v in enumerate(made)}

    def apart():  # Ceph's pool stats (and Cinder's, every 5 s) count the data written
        ratios = used(admin)
        return ratios[CEPH_HDD] - ratios[CEPH_SSD] >= 1.5 * GiB / ceph_total(admin)

    assert wait_until(apart, 120, 2), used(admin)
    ratios = used(admin)
    # half way between ceph-hdd now and ceph-ssd with one more volume, in percent: one move brings both under it
    threshold = max(1.0, round(50 * (ratios[CEPH_HDD] + ratios[CEPH_SSD] + GiB / ceph_total(admin)), 2))
    conf = {"threshold": threshold, "include_pools": [CEPH_HDD, CEPH_SSD], "max_moves": 1, "speed_mib": 0}
    run_id = api.trigger(REBALANCE, conf)
    assert api.wait_run(REBALANCE, run_id, RUN_TIMEOUT)["state"] == "success", api.task_instances(REBALANCE, run_id)
    assert "target_takeover" in logs(api, run_id, "plan")  # the plan says the path
    summary = api.xcom(REBALANCE, run_id, "summarize")
    [move] = [m for m in summary["moves"] if m["outcome"] == "moved"]
    assert (move["source"], move["destination"], move["path"]) == (CEPH_HDD, CEPH_SSD, "target_takeover"), move
    vid, image = move["volume_id"], f"volume-{move['volume_id']}"
    assert volume_states(admin, [vid])[vid] == ("available", "success", CEPH_SSD)
    assert ceph.image_digest(CEPH_POOLS["ceph-ssd"], image) == digests[vid], vid
    assert not has_lun(lab, "ceph-hdd", image, ceph), "the source image went with the commit"


def filled(ceph, backend, image, rng_seed):
    """Random data over the whole 1 GiB image, written in 4 MiB blocks; (size, sha256) as ``image_digest`` says
    them (no model in memory: only the digest is kept)."""
    rng, digest = random.Random(rng_seed), hashlib.sha256()
    with ceph.open_image(CEPH_POOLS[backend], image) as handle:
        for offset in range(0, GiB, 4 * MiB):
            block = rng.randbytes(4 * MiB)
            handle.pwrite(block, offset)
            digest.update(block)
        handle.flush()
    return GiB, digest.hexdigest()


def ceph_total(admin):
    return {p.name: p.total_bytes for p in read_pools(admin)}[CEPH_HDD]
