"""The fault matrix's deal (lab/faults.py): every cell once, each a fault the phase can suffer."""

from __future__ import annotations

from collections import Counter

from lab.faults import ARRAY_COMPONENTS, CEPH_COMPONENTS, PHASES, Phase, faults_of, plan_trials
from lab.services.ceph import POOLS as CEPH_POOLS


def test_the_whole_matrix_deals_each_phases_faults_once_and_only_those():
    trials = plan_trials(12)
    dealt = Counter((t.phase, t.component, t.signal) for t in trials)
    assert set(dealt.values()) == {1}
    assert sorted(dealt) == sorted((phase, c, s) for phase in Phase for c, s in faults_of(phase))
    for trial in trials:
        plan = PHASES[trial.phase]
        ends = {"source-array": plan.source, "target-array": plan.dest}
        if trial.component in ARRAY_COMPONENTS:  # a lab array to kill or freeze: never an end that is Ceph
            assert ends[trial.component] not in CEPH_POOLS, trial
        if trial.component in CEPH_COMPONENTS:
            assert CEPH_POOLS.keys() & set(ends.values()), trial


def test_a_prefix_spreads_over_the_phases_and_a_seed_deals_the_same():
    first = plan_trials(12, 2 * len(Phase))
    assert Counter(t.phase for t in first) == dict.fromkeys(Phase, 2)
    assert [(t.component, t.delay_s) for t in first] == [
        (t.component, t.delay_s) for t in plan_trials(12, 2 * len(Phase))
    ]
