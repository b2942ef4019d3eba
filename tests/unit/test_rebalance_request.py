"""A rebalance run's params (refused with the param named, before anything) and the admission under limits."""

from __future__ import annotations

import pytest
from airflow.sdk import Param
from airflow.sdk.exceptions import ParamValidationError

from include.backends.base import GiB
from include.migration.errors import InvalidParams
from include.migration.planner import Move, RebalanceParams
from include.migration.rebalance import (
    REBALANCE_PARAMS_SCHEMA,
    Limits,
    RebalanceRequest,
    admit,
    parse_rebalance_request,
)
from include.migration.steps import Step

POOLS = ("lab@alpha#pool1", "lab@alpha#pool2", "lab@beta#pool1", "lab@gamma#pool1")


def test_defaults_are_watchers_limits_and_an_80_percent_threshold():
    req = parse_rebalance_request({}, POOLS)
    assert req == RebalanceRequest()
    assert req.limits == Limits(per_source=2, per_destination=2, total=6)
    assert req.planner_params() == RebalanceParams(threshold=80.0)
    # the form shows the same defaults
    assert {k: v.get("default") for k, v in REBALANCE_PARAMS_SCHEMA.items()}["max_total"] == 6


def test_a_full_request_reaches_the_planner():
    req = parse_rebalance_request(
        {"threshold": 70, "include_pools": list(POOLS[:3]), "exclude_pools": [], "max_per_source": 1,
         "max_per_destination": 3, "max_total": 4, "max_moves": 10, "max_gib": 5, "dry_run": True, "speed_mib": 0},
        POOLS,
    )  # fmt: skip
    assert req.limits == Limits(1, 3, 4) and req.dry_run and req.speed_mib == 0
    assert req.planner_params() == RebalanceParams(70.0, frozenset(POOLS[:3]), frozenset(), 10, 5 * GiB)


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"threshold": 0}, "threshold must be a percentage between 1 and 99, got 0"),
        ({"threshold": 100}, "threshold must be a percentage between 1 and 99, got 100"),
        ({"threshold": "high"}, "threshold must be a percentage"),
        ({"include_pools": ["lab@delta#pool1"]}, "include_pools: pools Cinder does not know: lab@delta#pool1"),
        ({"exclude_pools": ["alpha"]}, "exclude_pools: not host@backend#pool: 'alpha'"),
        ({"include_pools": "lab@alpha#pool1"}, "include_pools must be a list of pool names"),
        ({"max_per_source": 0}, "max_per_source must be between 1 and"),
        ({"max_per_destination": -1}, "max_per_destination must be between 1 and"),
        ({"max_total": 0}, "max_total must be between 1 and"),
        ({"max_total": 2.5}, "max_total must be a whole number"),
        ({"max_moves": -1}, "max_moves must be between 0 and"),
        ({"max_gib": -5}, "max_gib must be between 0 and"),
        ({"include_pools": [POOLS[0]], "exclude_pools": [POOLS[0]]}, f"pools both included and excluded: {POOLS[0]}"),
        ({"dry_run": "yes"}, "dry_run must be true or false"),
        ({"speed_mib": -1}, "speed_mib must be between 0 and"),
        ({"colour": "red"}, "unknown parameters: colour"),
    ],
)
def test_bad_params_are_refused_with_the_param_named(conf, named):
    with pytest.raises(InvalidParams, match=named.replace("?", r"\?")):
        parse_rebalance_request(conf, POOLS)


def test_every_problem_is_named_at_once():
    with pytest.raises(InvalidParams) as err:
        parse_rebalance_request({"threshold": 0, "max_total": 0, "dry_run": 1}, POOLS)
    assert all(k in str(err.value) for k in ("threshold", "max_total", "dry_run"))


def test_the_form_refuses_what_the_parser_refuses():
    """The same bounds in the Airflow form (Param validation) as in parse_rebalance_request."""
    bad = {"threshold": [0, 100], "max_per_source": [0], "max_total": [-1], "max_moves": [-1], "dry_run": ["yes"],
           "include_pools": [["alpha"]], "speed_mib": [-1]}  # fmt: skip
    for name, values in bad.items():
        for value in values:
            with pytest.raises(ParamValidationError):
                Param(**REBALANCE_PARAMS_SCHEMA[name]).resolve(value)
    for schema in REBALANCE_PARAMS_SCHEMA.values():
        Param(**schema).resolve(schema.get("default"))  # every default passes its own schema


def move(volume, source, destination):
    return Move(volume, GiB, source, destination, Step.TARGET_TAKEOVER)


def test_admission_counts_running_migrations_per_source_destination_and_total():
    a1, a2, b1, g1 = POOLS
    pending = [move(f"v{i}", g1, a1 if i % 2 else b1) for i in range(10)]
    first = admit(pending, running=[], limits=Limits(2, 2, 6))
    assert [m.volume_id for m in first] == ["v0", "v1"]  # two off gamma, whatever the destinations
    # a manual migration off gamma is running: one more only
    assert [m.volume_id for m in admit(pending, running=[(g1, a2)], limits=Limits(2, 2, 6))] == ["v0"]
    # per destination: two onto a1 running already, so only moves to b1
    pending2 = [move("x", a2, a1), move("y", a2, b1)]
    assert admit(pending2, running=[(g1, a1), (b1, a1)], limits=Limits(2, 2, 6)) == [pending2[1]]
    # in total
    assert admit(pending2, running=[("p", "q")] * 6, limits=Limits(2, 2, 6)) == []
    many = [move(f"m{i}", f"lab@s{i}#p", f"lab@d{i}#p") for i in range(10)]
    assert len(admit(many, running=[("p", "q")], limits=Limits(2, 2, 6))) == 5
