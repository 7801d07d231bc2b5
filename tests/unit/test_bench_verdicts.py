"""The benchmark's verdicts against its goals."""

from __future__ import annotations

from fair_lightning.bench.measure import verdict


def test_verdicts_name_the_goal_and_whether_it_is_met():
    assert verdict("overhead/adversarial", 0.95) == ">= 0.9: met"
    assert verdict("adversary_cost/adversarial", 1.7) == "<= 1.5: NOT met"
    assert verdict("growth/epoch_exponent", 1.0) == ""


def test_the_audit_figures_of_every_scale_are_reported_with_their_goals():
    from fair_lightning.bench.measure import flat_ratios, markdown

    def audit(people, fit_end, test, training):
        return {"people": people, "fit_end_s": fit_end, "test_s": test, "training_s": training,
                "epochs": 15, "fraction_of_training": (fit_end + test) / training,
                "fit_end_fraction": fit_end / training, "erasure_s": 0.4,
                "erasure_fraction": 0.01, "per_epoch": 1.0, "suites_reused": 16,
                "suites_shared": 2}

    r = {"threads": 2, "cpu_count": 2, "accelerator": "cpu",
         "audit": {"1x": audit(400, 20.0, 1.0, 40.0), "10x": audit(4000, 100.0, 5.0, 500.0)}}
    flat = flat_ratios(r)
    assert flat["audit/fraction_of_training"] == 21.0 / 40.0
    assert flat["audit/fit_end_fraction_10x"] == 100.0 / 500.0
    assert "erasure/fraction_of_training_10x" not in flat
    r["ratios"] = flat
    md = markdown(r)
    assert "| `audit/fit_end_fraction_10x` | 0.20 | <= 0.25: met |" in md
    assert "| `audit/fit_end_fraction` | 0.50 | <= 0.25: NOT met |" in md
    assert "at 10x (4000 people)" in md


def test_the_strength_table_flags_a_new_score_outside_the_reference_interval():
    from benchmarks.audit_strength import compare

    def sel(attacker, acc, low=None, high=None):
        return {"attacker": attacker, "params": "", "bal_acc": acc,
                "ci": [acc - 0.05 if low is None else low, acc + 0.05 if high is None else high]}

    ref = {"wall_s": 50.0, "selected": {"fused/gender/clip": sel("kernel", 0.72),
                                        "fused/gender/person": sel("person_vote_mlp", 0.86)}}
    new = {"wall_s": 20.0, "selected": {"fused/gender/clip": sel("svm", 0.70),
                                        "fused/gender/person": sel("person_vote_mlp", 0.75)}}
    table, outside = compare(ref, new)
    assert outside == 1
    assert "| fused/gender/clip | kernel | 0.720 [0.670, 0.770] | svm | 0.700 | yes |" in table
    assert "| person_vote_mlp | 0.750 | **no** |" in table
    assert "the same attacker selected in 1 of 2" in table
    del new["selected"]["fused/gender/clip"]
    assert compare(ref, new)[1] == 2  # a selection that vanished counts against it
