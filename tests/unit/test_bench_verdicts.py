"""The benchmark's verdicts against its goals."""

from __future__ import annotations

from fair_lightning.bench_train import verdict


def test_verdicts_name_the_goal_and_whether_it_is_met():
    assert verdict("overhead/adversarial", 0.95) == ">= 0.9: met"
    assert verdict("adversary_cost/adversarial", 1.7) == "<= 1.5: NOT met"
    assert verdict("growth/epoch_exponent", 1.0) == ""
