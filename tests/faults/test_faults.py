"""The short fault run (tests/faults/README.md): every invariant and every answer must hold."""

from __future__ import annotations

import os

import pytest

from tests.faults.faults import DATABASE_KINDS, KINDS, plan
from tests.faults.run import Config, run

SEED = int(os.environ.get("CJ_FAULTS_SEED", "1"))
# 2.5 min of faults: about 3.5 min with start-up, healing, convergence and the checks
MINUTES = float(os.environ.get("CJ_FAULTS_MINUTES", "2.5"))


def test_the_schedule_is_the_seed_s_and_covers_every_kind():
    faults = plan(SEED, MINUTES * 60)
    assert faults == plan(SEED, MINUTES * 60)
    assert faults != plan(SEED + 1, MINUTES * 60)
    assert {fault.kind for fault in faults} == set(KINDS)
    ends = [f.at + f.seconds for f in faults if f.kind in DATABASE_KINDS]
    starts = [f.at for f in faults if f.kind in DATABASE_KINDS]
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))


@pytest.mark.timeout(330)
def test_short_fault_run_keeps_every_invariant_and_every_answer_true():
    report = run(Config(seed=SEED, minutes=MINUTES, converge_seconds=90))
    print(report.text())
    assert not report.failures, "\n".join(report.failures)
