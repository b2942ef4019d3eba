"""The rebalancing planner on scripted clouds: where volumes go, and why the others stay."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from include.backends.base import GiB
from include.migration.planner import (
    SKIP_MEANINGS,
    Move,
    PoolState,
    RebalanceParams,
    SkipReason,
    VolumeState,
    expected_path,
    format_plan,
    plan_rebalance,
)
from include.migration.steps import Step


def pool(name, total_gib, used_gib, prov_gib=None, **kw):
    prov = used_gib if prov_gib is None else prov_gib
    return PoolState(f"lab@{name}", total_gib * GiB, (total_gib - used_gib) * GiB, prov * GiB, **kw)


def vol(vid, gib, where, **kw):
    return VolumeState(vid, gib * GiB, f"lab@{where}", **kw)


def plan(pools, volumes, **params):
    return plan_rebalance(pools, volumes, RebalanceParams(**params))


def where(p):
    """volume id -> destination pool (short name), for the moves of a plan."""
    return {m.volume_id: m.destination.removeprefix("lab@") for m in p.moves}


def reasons(p):
    return {s.volume_id: s.reason for s in p.skipped}


def greedy(pools, volumes, threshold):
    """Watcher's storage capacity balance, in short: for each pool over the threshold, smallest volume first,
    to the other pool with the highest free ratio that has the space for it; destinations are not checked
    against the threshold. Returns the used GiB of each pool afterwards."""
    used = {p.name: (p.total_bytes - p.free_bytes) // GiB for p in pools}
    total = {p.name: p.total_bytes // GiB for p in pools}
    for src in sorted(used, key=lambda n: -used[n] / total[n]):
        for v in sorted((v for v in volumes if v.pool == src), key=lambda v: v.size_bytes):
            if used[src] / total[src] <= threshold / 100:
                break
            size = v.size_bytes // GiB
            room = [n for n in used if n != src and total[n] - used[n] >= size]
            if room:
                dest = max(room, key=lambda n: (total[n] - used[n]) / total[n])
                used[src] -= size
                used[dest] += size
    return used


def test_greedy_pushes_a_destination_over_the_threshold_ours_does_not():
    pools = [pool("a#1", 100, 90), pool("b#1", 100, 88), pool("d#1", 100, 75)]
    volumes = [vol("a1", 4, "a#1"), vol("a2", 4, "a#1"), vol("a3", 4, "a#1"), vol("a4", 78, "a#1")]
    volumes += [vol("b1", 3, "b#1"), vol("b2", 85, "b#1")]

    watcher = greedy(pools, volumes, 80)
    assert watcher["lab@d#1"] == 87  # a1..a3 all went to d: 75 -> 87, over the threshold
    assert watcher["lab@a#1"] == 81  # and b1 went back onto a, drained a moment before: ping-pong

    ours = plan(pools, volumes, threshold=80)
    assert where(ours) == {"a1": "d#1"}  # d ends exactly at the threshold: allowed, not crossed
    assert ours.after["lab@d#1"] == pytest.approx(0.79)
    assert all(ratio <= 0.80 for name, ratio in ours.after.items() if name not in ("lab@a#1", "lab@b#1"))
    r = reasons(ours)
    assert r["a2"] is r["a3"] is r["a4"] is SkipReason.NO_DESTINATION
    assert r["b1"] is SkipReason.NO_DESTINATION  # a, a source itself, is no destination in the same plan


def test_threshold_is_reached_not_crossed():
    pools = [pool("a#1", 100, 90), pool("d#1", 100, 70)]
    p = plan(pools, [vol("v1", 10, "a#1"), vol("v2", 10, "a#1"), vol("v3", 10, "a#1")], threshold=80)
    assert where(p) == {"v1": "d#1"}  # a 90 -> 80 (not over any more), d 70 -> 80 (at it, allowed)
    assert p.after == {"lab@a#1": pytest.approx(0.8), "lab@d#1": pytest.approx(0.8)}
    assert reasons(p) == {"v2": SkipReason.SOURCE_BALANCED, "v3": SkipReason.SOURCE_BALANCED}


def test_smallest_first_until_the_source_is_at_the_threshold():
    pools = [pool("a#1", 100, 90), pool("d#1", 100, 0)]
    volumes = [vol("v7", 7, "a#1"), vol("v2", 2, "a#1"), vol("v5", 5, "a#1"), vol("v3", 3, "a#1")]
    p = plan(pools, volumes)
    assert [m.volume_id for m in p.moves] == ["v2", "v3", "v5"]  # 90 -> 88 -> 85 -> 80
    assert reasons(p) == {"v7": SkipReason.SOURCE_BALANCED}
    assert p.before["lab@a#1"] == pytest.approx(0.9) and p.after["lab@a#1"] == pytest.approx(0.8)


def test_equal_sizes_leave_in_id_order_and_most_over_pool_first():
    pools = [pool("a#1", 100, 85), pool("b#1", 100, 95), pool("d#1", 1000, 0)]
    volumes = [vol("z", 5, "a#1"), vol("y", 5, "a#1"), vol("b", 15, "b#1")]
    p = plan(pools, volumes)
    assert [m.volume_id for m in p.moves] == ["b", "y"]
    assert reasons(p) == {"z": SkipReason.SOURCE_BALANCED}


def test_budget_max_moves_and_max_bytes():
    pools = [pool("a#1", 100, 95), pool("d#1", 100, 0)]
    volumes = [vol(f"v{n}", n, "a#1") for n in (2, 3, 5, 7)]
    assert [m.volume_id for m in plan(pools, volumes, max_moves=1).moves] == ["v2"]
    assert set(reasons(plan(pools, volumes, max_moves=1)).values()) == {SkipReason.BUDGET}
    by_bytes = plan(pools, volumes, max_bytes=6 * GiB)
    assert [m.volume_id for m in by_bytes.moves] == ["v2", "v3"]  # v5 would make 10 GiB
    assert reasons(by_bytes) == {"v5": SkipReason.BUDGET, "v7": SkipReason.BUDGET}
    nothing = plan(pools, volumes, max_moves=0)
    assert nothing.moves == () and Counter(reasons(nothing).values()) == {SkipReason.BUDGET: 4}


def test_volumes_the_flow_refuses_are_skipped_with_their_reason():
    pools = [pool("a#1", 100, 95), pool("n#1", 100, 10), pool("d#1", 1000, 0)]
    volumes = [
        vol("used", 1, "a#1", status="in-use", attachments=1),
        vol("attached", 1, "a#1", attachments=1),
        vol("broken", 1, "a#1", status="error"),
        vol("snap", 1, "a#1", has_snapshots=True),
        vol("grouped", 1, "a#1", group_id="g1"),
        vol("moving", 1, "a#1", migration_status="migrating_attachable", migration_dest="lab@a#1"),
        vol("failed-before", 1, "a#1", migration_status="error"),
        vol("calm", 1, "n#1", has_snapshots=True),
        vol("lost", 1, "x#1"),
    ]
    p = plan(pools, volumes)
    assert where(p) == {"failed-before": "d#1"}  # a migration that ended in error may be tried again
    assert reasons(p) == {
        "used": SkipReason.ATTACHED,
        "attached": SkipReason.ATTACHED,
        "broken": SkipReason.NOT_AVAILABLE,
        "snap": SkipReason.HAS_SNAPSHOTS,
        "grouped": SkipReason.IN_GROUP,
        "moving": SkipReason.MIGRATING,
        "calm": SkipReason.POOL_NOT_OVER,  # its pool's reason first: it would not move anyway
        "lost": SkipReason.POOL_UNKNOWN,
    }


def test_typed_volumes_go_only_to_their_backend():
    pools = [
        pool("alpha#1", 100, 95, takeover=True),
        pool("alpha#2", 100, 60, takeover=True),
        pool("beta#1", 100, 0, takeover=True),
        pool("gamma#1", 100, 90),
        pool("fast#1", 100, 95, volume_backend_name="ssd"),
        pool("fast#2", 100, 0, volume_backend_name="ssd"),
    ]
    volumes = [
        vol("pinned-alpha", 5, "alpha#1", volume_type="gold", pinned_backend="alpha"),
        vol("free", 5, "alpha#1"),
        vol("pinned-gamma", 5, "alpha#1", volume_type="slow", pinned_backend="gamma"),
        vol("pinned-ssd", 20, "fast#1", volume_type="ssd", pinned_backend="ssd"),
    ]
    p = plan(pools, volumes)
    # beta is freer and takes over, but the type pins alpha: the other pool of alpha, moved by the array
    assert where(p) == {"pinned-alpha": "alpha#2", "free": "beta#1", "pinned-ssd": "fast#2"}
    paths = {m.volume_id: m.path for m in p.moves}
    assert paths == {"pinned-alpha": Step.SOURCE_DRIVER, "free": Step.TARGET_TAKEOVER, "pinned-ssd": Step.SOURCE_DRIVER}
    skipped = {s.volume_id: s for s in p.skipped}
    assert skipped["pinned-gamma"].reason is SkipReason.TYPE_PINNED  # gamma is at 90%: no room there
    assert "gamma" in skipped["pinned-gamma"].detail


def test_migrations_in_flight_hold_space_on_their_destination():
    pools = [pool("a#1", 100, 90), pool("d#1", 100, 70, takeover=True), pool("e#1", 100, 75)]
    mover = vol("v", 10, "a#1")
    # alone, v fits d exactly (70 + 10 = 80) and d takes over: d it is
    assert where(plan(pools, [mover])) == {"v": "d#1"}
    in_flight = vol("f", 4, "x#1", migration_status="starting", migration_dest="lab@d#1")
    attachable = vol("g", 4, "e#1", migration_status="migrating_attachable", migration_dest="lab@e#1")
    p = plan([*pools, pool("x#1", 100, 78)], [mover, in_flight, attachable])
    # 4 GiB are on their way to d: v no longer fits there; e counts g once (it is on e already): 75 + 10 > 80
    assert reasons(p) == {"v": SkipReason.NO_DESTINATION, "f": SkipReason.POOL_NOT_OVER, "g": SkipReason.POOL_NOT_OVER}
    assert p.after["lab@d#1"] == pytest.approx(0.74) and p.after["lab@e#1"] == pytest.approx(0.75)
    p = plan([*pools, pool("x#1", 100, 78)], [mover, vol("f", 4, "a#1", migration_status="starting")])
    assert reasons(p) == {"f": SkipReason.MIGRATING} and where(p) == {"v": "d#1"}  # no destination known: no hold


def test_in_flight_space_can_make_a_pool_a_source():
    pools = [pool("a#1", 100, 78), pool("d#1", 100, 0)]
    volumes = [vol("v", 5, "a#1"), vol("f", 5, "d#1", migration_status="starting", migration_dest="lab@a#1")]
    assert where(plan(pools, volumes)) == {"v": "d#1"}  # a is at 78% + 5 GiB coming: 83%


def test_takeover_destinations_first_then_the_freest_then_the_name():
    pools = [pool("a#1", 100, 90), pool("d#1", 100, 50, takeover=True), pool("e#1", 100, 10), pool("f#1", 100, 10)]
    p = plan(pools, [vol("v1", 5, "a#1"), vol("v2", 5, "a#1")])
    assert where(p) == {"v1": "d#1", "v2": "d#1"}  # d is fuller than e and f, but usable at once
    assert {m.path for m in p.moves} == {Step.TARGET_TAKEOVER}
    plain = [pools[0], pools[2], pools[3]]
    assert where(plan(plain, [vol("v1", 5, "a#1"), vol("v2", 5, "a#1")])) == {"v1": "e#1", "v2": "f#1"}


def test_same_backend_pool_move_before_host_copy():
    pools = [pool("a#1", 100, 90), pool("a#2", 100, 70), pool("g#1", 100, 0)]
    p = plan(pools, [vol("v", 10, "a#1")])
    assert p.moves == (Move("v", 10 * GiB, "lab@a#1", "lab@a#2", Step.SOURCE_DRIVER),)


def test_expected_path():
    src, sibling = pool("a#1", 10, 0), pool("a#2", 10, 0)
    assert expected_path(src, sibling) is Step.SOURCE_DRIVER
    assert expected_path(src, pool("b#1", 10, 0, takeover=True)) is Step.TARGET_TAKEOVER
    assert expected_path(src, pool("g#1", 10, 0)) is Step.HOST_COPY
    assert src.backend == "a" and src.used_ratio == 0


def test_a_takeover_is_expected_only_from_a_source_protocol_the_destination_opens():
    rbd_source, nbd_source = pool("ceph-hdd#1", 10, 0, protocol="rbd"), pool("beta#1", 10, 0, protocol="nbd")
    ceph = pool("ceph-ssd#1", 10, 0, takeover=True, protocol="rbd", takeover_from=("rbd",))
    assert expected_path(rbd_source, ceph) is Step.TARGET_TAKEOVER  # RBD live migration
    assert expected_path(nbd_source, ceph) is Step.HOST_COPY  # an NBD export: the host copy's
    array = pool("alpha#1", 10, 0, takeover=True, protocol="nbd", takeover_from=("NBD",))  # named as Cinder may
    assert expected_path(nbd_source, array) is Step.TARGET_TAKEOVER
    assert expected_path(rbd_source, pool("x#1", 10, 0, takeover=True)) is Step.TARGET_TAKEOVER  # says none: any


def test_over_subscription_is_respected():
    thin = pool("d#1", 100, 10, prov_gib=95)  # 10% written, 95 GiB promised
    pools = [pool("a#1", 100, 90), thin]
    assert reasons(plan(pools, [vol("v", 10, "a#1")])) == {"v": SkipReason.NO_DESTINATION}
    roomy = pool("d#1", 100, 10, prov_gib=95, max_over_subscription_ratio=2.0)
    assert where(plan([pools[0], roomy], [vol("v", 10, "a#1")])) == {"v": "d#1"}


def test_down_pools_are_neither_source_nor_destination():
    pools = [pool("a#1", 100, 90), pool("b#1", 100, 95, up=False), pool("d#1", 100, 0, up=False), pool("e#1", 100, 60)]
    p = plan(pools, [vol("v", 10, "a#1"), vol("w", 10, "b#1")])
    assert where(p) == {"v": "e#1"}
    assert reasons(p) == {"w": SkipReason.POOL_DOWN}


def test_include_and_exclude_pools():
    pools = [pool("a#1", 100, 90), pool("b#1", 100, 90), pool("d#1", 100, 0), pool("e#1", 100, 50)]
    volumes = [vol("v", 10, "a#1"), vol("w", 10, "b#1")]
    p = plan(pools, volumes, exclude_pools={"lab@b#1", "lab@d#1"})
    assert where(p) == {"v": "e#1"} and reasons(p) == {"w": SkipReason.POOL_EXCLUDED}
    p = plan(pools, volumes, include_pools=["lab@a#1", "lab@e#1"])
    assert where(p) == {"v": "e#1"} and reasons(p) == {"w": SkipReason.POOL_EXCLUDED}
    assert p.after["lab@d#1"] == 0  # out of scope: untouched, though it is the emptiest


def random_cloud(seed, n_pools=8, n_volumes=600):
    rng = random.Random(seed)
    pools, volumes = [], []
    for i in range(n_pools):
        total = rng.choice((500, 1000, 2000))
        used = int(total * rng.uniform(0.3, 0.97))
        pools.append(
            pool(
                f"b{i % 4}#p{i}",
                total,
                used,
                prov_gib=used + rng.randint(0, total // 2),
                max_over_subscription_ratio=rng.choice((1.0, 1.5, 20.0)),
                takeover=i % 4 < 2,
                up=rng.random() > 0.1,
            )
        )
    names = [p.name.removeprefix("lab@") for p in pools]
    for i in range(n_volumes):
        flight = rng.random() < 0.03
        volumes.append(
            vol(
                f"vol-{i:04d}",
                rng.randint(1, 100),
                rng.choice(names + ["gone#p"] if i % 97 == 0 else names),
                status=rng.choice(["available"] * 12 + ["in-use", "error"]),
                pinned_backend=rng.choice([None] * 6 + ["b0", "b3", "nowhere"]),
                has_snapshots=rng.random() < 0.05,
                group_id="g" if rng.random() < 0.03 else None,
                migration_status="starting" if flight else None,
                migration_dest="lab@" + rng.choice(names) if flight else None,
            )
        )
    return pools, volumes


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("params", [{}, {"threshold": 60, "max_moves": 40}, {"threshold": 90, "max_bytes": 500 * GiB}])
def test_every_volume_once_and_no_pool_pushed_over(seed, params):
    pools, volumes = random_cloud(seed)
    p = plan(pools, volumes, **params)
    ids = [m.volume_id for m in p.moves] + [s.volume_id for s in p.skipped]
    assert sorted(ids) == sorted(v.id for v in volumes)  # every volume, exactly once
    threshold = p.threshold / 100
    by_name = {q.name: q for q in pools}
    by_id = {v.id: v for v in volumes}
    # recompute the projection from the plan alone
    free = {q.name: q.free_bytes for q in pools}
    prov = {q.name: q.provisioned_bytes for q in pools}
    for v in volumes:
        if v.migration_status == "starting" and v.migration_dest != v.pool:
            free[v.migration_dest] -= v.size_bytes
            prov[v.migration_dest] += v.size_bytes
    for m in p.moves:
        v = by_id[m.volume_id]
        assert (m.source, m.size_bytes) == (v.pool, v.size_bytes) and m.source != m.destination
        assert v.pinned_backend in (None, by_name[m.destination].backend)
        assert by_name[m.destination].up and by_name[m.source].up
        free[m.source] += m.size_bytes
        prov[m.source] -= m.size_bytes
        free[m.destination] -= m.size_bytes
        prov[m.destination] += m.size_bytes
    for name, q in by_name.items():
        assert p.after[name] == pytest.approx((q.total_bytes - free[name]) / q.total_bytes)
    sources, destinations = {m.source for m in p.moves}, {m.destination for m in p.moves}
    assert not sources & destinations
    for name in destinations:
        q = by_name[name]
        assert p.after[name] <= threshold + 1e-12
        assert prov[name] <= q.total_bytes * q.max_over_subscription_ratio
    if "max_moves" in params:
        assert len(p.moves) <= params["max_moves"]
    if "max_bytes" in params:
        assert p.moved_bytes <= params["max_bytes"]
    # a source left over the threshold gave a reason for each volume it kept that could have moved
    for s in p.skipped:
        if s.reason is SkipReason.SOURCE_BALANCED:
            assert p.after[s.pool] <= threshold + 1e-12


def test_same_input_same_plan_whatever_the_order():
    pools, volumes = random_cloud(7)
    first = plan(pools, volumes)
    assert first.moves  # the cloud has work to do
    assert plan(pools, volumes) == first
    rng = random.Random(0)
    rng.shuffle(pools)
    rng.shuffle(volumes)
    assert plan(pools, volumes) == first


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 0}, "threshold must be between 1 and 99"),
        ({"threshold": 100}, "threshold must be between 1 and 99"),
        ({"threshold": "80"}, "threshold must be a number"),
        ({"max_moves": -1}, "max_moves must be a whole number >= 0"),
        ({"max_bytes": -GiB}, "max_bytes must be a whole number >= 0"),
        ({"max_moves": 1.5}, "max_moves must be a whole number"),
        ({"include_pools": "lab@a#1"}, "include_pools must be a set of pool names"),
    ],
)
def test_impossible_params_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        RebalanceParams(**params)


def test_impossible_clouds_are_refused():
    with pytest.raises(ValueError, match="volume v is given twice"):
        plan_rebalance([pool("a#1", 10, 9)], [vol("v", 1, "a#1"), vol("v", 2, "a#1")])
    with pytest.raises(ValueError, match="pool lab@a#1 is given twice"):
        plan_rebalance([pool("a#1", 10, 9), pool("a#1", 10, 1)], [])
    with pytest.raises(ValueError, match="total_bytes must be positive"):
        pool("a#1", 0, 0)


def test_every_reason_has_a_meaning():
    assert set(SKIP_MEANINGS) == set(SkipReason)
    assert all(r.meaning and "\n" not in r.meaning for r in SkipReason)


def test_format_plan():
    pools = [pool("a#1", 100, 90), pool("d#1", 100, 0, takeover=True)]
    text = format_plan(plan(pools, [vol("v1", 10, "a#1"), vol("v2", 11, "a#1"), vol("v3", 1, "a#1", status="error")]))
    assert "1 move(s), 10.0 GiB; 2 volume(s) stay" in text
    assert "v1      10.0      lab@a#1 -> lab@d#1     target_takeover" in text
    assert f"1        source_balanced  {SkipReason.SOURCE_BALANCED.meaning}" in text
    assert "lab@a#1  90.0%   80.0%" in text and "lab@d#1  0.0%    10.0%" in text
