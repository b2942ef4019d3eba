"""How long a copy may take: derived from size and speed, set once with the lock, refused when too long."""

from __future__ import annotations

import time

import pytest

from include.backends.base import GiB
from include.migration.deadlines import MAX_TIMEOUT_S, MIN_COPY_TIMEOUT_S, copy_timeout, deadline_text
from include.migration.errors import MigrationRefused
from tests.unit.flow.conftest import ScriptedCinder, validate


def test_a_large_volume_at_a_small_speed_gets_time_in_proportion():
    timeout = copy_timeout(64 * GiB, speed_mib=1)
    assert timeout.seconds == 2 * 64 * 1024 + 15 * 60  # 64 GiB at 1 MiB/s, twice over, and the start's allowance
    assert timeout.basis == "derived: 64 GiB at speed_mib=1 is 18 h 12 min, x2 + 15 min = 36 h 40 min"


def test_without_a_speed_the_assumed_rate_counts_and_small_volumes_get_the_minimum():
    assert copy_timeout(1024 * GiB, speed_mib=None).seconds == 2 * 1024 * 1024 // 25 + 15 * 60 + 1
    assert copy_timeout(1024 * GiB, speed_mib=0).basis.startswith("derived: 1024 GiB at an assumed 25 MiB/s")
    small = copy_timeout(1 * GiB, speed_mib=None)
    assert small.seconds == MIN_COPY_TIMEOUT_S
    assert small.basis.endswith("is 41 s, x2 + 15 min = 16 min, raised to the 2 h minimum")


def test_a_given_copy_timeout_wins():
    assert copy_timeout(64 * GiB, speed_mib=1, given=600) == copy_timeout(1, None, 600)
    assert copy_timeout(1, None, 600).basis == "copy_timeout_s=600 as given (10 min)"


def test_a_copy_longer_than_the_limit_is_refused_before_the_lock():
    with pytest.raises(
        ValueError,
        match=r"10240 GiB at speed_mib=1 would need 242 d 17 h .*, more than the 30-day limit: give a higher speed_mib",
    ):
        copy_timeout(10 * 1024 * GiB, speed_mib=1)
    cinder = ScriptedCinder()
    cinder.volume["size"] = 10 * 1024
    with pytest.raises(MigrationRefused, match="30-day limit: give a higher speed_mib"):
        validate(cinder, speed_mib=1)
    assert not cinder.called("begin")
    assert copy_timeout(10 * 1024 * GiB, speed_mib=10).seconds < MAX_TIMEOUT_S


def test_the_deadline_is_set_once_with_the_lock_and_a_retry_gets_the_same():
    cinder = ScriptedCinder()
    cinder.volume["size"] = 64
    cinder.pools["lab@alpha#pool1"]["thin_provisioning_support"] = True
    before = time.time()
    plan = validate(cinder, speed_mib=1)
    assert plan.copy_timeout_s == 131_972 and plan.copy_deadline_basis.startswith("derived: 64 GiB at speed_mib=1")
    assert before + 131_972 - 1 <= plan.copy_deadline <= time.time() + 131_972
    assert cinder.lock["deadline"] == plan.copy_deadline
    time.sleep(1.1)
    again = validate(cinder, speed_mib=1)  # a retry of validate_and_lock, or a cleared run: the lock holds
    assert again.copy_deadline == plan.copy_deadline
    assert plan.deadline_passed(plan.copy_deadline - 1) is None
    late = plan.deadline_passed(plan.copy_deadline)
    assert late == f"the copy deadline {deadline_text(plan.copy_deadline)} has passed ({plan.copy_deadline_basis})"
