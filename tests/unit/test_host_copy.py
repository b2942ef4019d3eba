"""Pure helpers of the host copy: extents, zero runs, pacing, rate and the checkpoint file."""

from __future__ import annotations

import json

import pytest

from include import host_copy as hc
from include.backends.progress import RateMeter
from include.block_devices import parse_extents

K = 64 * 1024


def test_parse_extents_clips_to_end_and_drops_empty():
    assert parse_extents([100, 0, 200, 3, 50, 0], 1000, 1250) == [(1000, 100, 0), (1100, 150, 3)]
    assert parse_extents([0, 0, 10, 1], 0, 100) == [(0, 10, 1)]
    assert parse_extents([4096, 3], 0, 100) == [(0, 100, 3)]
    assert parse_extents([], 0, 100) == []


def test_zero_runs_merge_neighbours_and_cover_everything():
    data = bytes(2 * K) + b"x" * K + b"\0" * (K - 1) + b"y" + bytes(K) + b"z" * 100
    runs = hc.zero_runs(data, K)
    assert runs == [(0, 2 * K, True), (2 * K, 2 * K, False), (4 * K, K, True), (5 * K, 100, False)]
    assert sum(length for _, length, _ in runs) == len(data)


def test_zero_runs_all_zero_and_empty():
    assert hc.zero_runs(bytes(3 * K + 5), K) == [(0, 3 * K + 5, True)]
    assert hc.zero_runs(b"", K) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_spaces_requests_by_their_size():
    fake = FakeClock()
    pacer = hc.Pacer(100, fake.clock, fake.sleep)
    for _ in range(5):
        pacer.take(50)  # 0.5 s worth each
    assert fake.slept == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert fake.now == pytest.approx(102.0)


def test_pacer_saves_no_credit_while_idle():
    fake = FakeClock()
    pacer = hc.Pacer(100, fake.clock, fake.sleep)
    pacer.take(100)
    fake.now += 10  # idle
    pacer.take(100)
    pacer.take(100)
    assert fake.slept == pytest.approx([1.0])


def test_pacer_unlimited_and_invalid():
    fake = FakeClock()
    pacer = hc.Pacer(0, fake.clock, fake.sleep)
    for _ in range(10):
        pacer.take(10**9)
    assert fake.slept == []
    with pytest.raises(ValueError):
        hc.Pacer(-1)


def test_rate_meter_uses_the_recent_window():
    meter = RateMeter(total=1000, window=5.0)
    assert meter.rate() == 0.0
    assert meter.eta() is None
    meter.add(0.0, 0)
    meter.add(1.0, 500)  # fast start
    for t in range(2, 12):
        meter.add(float(t), 500 + 10 * (t - 1))  # then 10 bytes/s
    assert meter.rate() == pytest.approx(10.0, rel=0.25)
    assert meter.eta() == pytest.approx((1000 - 600) / meter.rate())
    meter.add(12.0, 1000)
    assert meter.eta() == 0.0


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "cp.json"
    assert hc._load_checkpoint(path, "nbd://a/x", "nbd://b/y", 100) == 0
    hc._save_checkpoint(path, "nbd://a/x", "nbd://b/y", 100, 40)
    assert json.loads(path.read_text()) == {
        "source": "nbd://a/x",
        "target": "nbd://b/y",
        "size": 100,
        "offset": 40,
    }
    assert hc._load_checkpoint(path, "nbd://a/x", "nbd://b/y", 100) == 40
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("source", "target", "size"),
    [("nbd://a/other", "nbd://b/y", 100), ("nbd://a/x", "nbd://b/other", 100), ("nbd://a/x", "nbd://b/y", 200)],
)
def test_checkpoint_of_another_copy_is_refused(tmp_path, source, target, size):
    path = tmp_path / "cp.json"
    hc._save_checkpoint(path, "nbd://a/x", "nbd://b/y", 100, 40)
    with pytest.raises(ValueError, match="another copy"):
        hc._load_checkpoint(path, source, target, size)


@pytest.mark.parametrize("body", ["not json", "{}", '{"source": "s", "target": "t", "size": 10, "offset": 11}'])
def test_broken_checkpoint_is_refused(tmp_path, body):
    path = tmp_path / "cp.json"
    path.write_text(body)
    with pytest.raises(ValueError, match="checkpoint"):
        hc._load_checkpoint(path, "s", "t", 10)


@pytest.mark.parametrize(("chunk", "every"), [(0, 1), (1000, 1), (128 * 1024 * 1024, 1), (4096, 0)])
def test_bad_arguments_are_refused_before_connecting(chunk, every):
    with pytest.raises(ValueError):
        hc.host_copy("nbd://127.0.0.1:1/none", "nbd://127.0.0.1:1/none", chunk=chunk, checkpoint_every=every)
