"""Output fairness: hand-computed definitions, fairlearn/torchmetrics cross-checks, the Metric twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    true_positive_rate,
)
from torchmetrics.classification import BinaryFairness

from fair_lightning.audit.fairness import OutputFairness, output_fairness, top_q_cutoff

# Hand example. Eight known candidates (two groups of four) and one unknown.
#   idx  group  score  label
#    0     0    0.90   0.80
#    1     0    0.60   0.40
#    2     0    0.55   0.60
#    3     0    0.20   0.10
#    4     1    0.30   0.90
#    5     1    0.80   0.70
#    6     1    0.40   0.20
#    7     1    0.10   0.50
#    8    -1    0.99   0.00
SCORES = [0.90, 0.60, 0.55, 0.20, 0.30, 0.80, 0.40, 0.10, 0.99]
LABELS = [0.80, 0.40, 0.60, 0.10, 0.90, 0.70, 0.20, 0.50, 0.00]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, -1]


def test_hand_example_threshold():
    out = output_fairness(SCORES, LABELS, GROUPS, threshold=0.5)
    # Regression view.
    # MAE_0 = (0.10 + 0.20 + 0.05 + 0.10) / 4 = 0.1125 ; MAE_1 = (0.6 + 0.1 + 0.2 + 0.4) / 4 = 0.325
    assert out["mae/0"] == pytest.approx(0.1125)
    assert out["mae/1"] == pytest.approx(0.325)
    assert out["mae_gap"] == pytest.approx(0.2125)
    # mean score: 2.25 / 4 = 0.5625 and 1.6 / 4 = 0.4
    assert out["mean_score/0"] == pytest.approx(0.5625)
    assert out["mean_score/1"] == pytest.approx(0.4)
    assert out["mean_score_gap"] == pytest.approx(0.1625)
    assert out["n/0"] == 4 and out["n/1"] == 4 and out["n_unknown"] == 1
    # Invited (score >= .5): group 0 -> idx 0,1,2 (3/4); group 1 -> idx 5 (1/4).
    assert out["selection_rate/0"] == pytest.approx(0.75)
    assert out["selection_rate/1"] == pytest.approx(0.25)
    assert out["dp_diff"] == pytest.approx(0.5)
    assert out["dp_ratio"] == pytest.approx(1 / 3)
    # Qualified (label >= .5): group 0 -> idx 0,2, both invited: TPR 1.
    # group 1 -> idx 4,5,7, only idx 5 invited: TPR 1/3.
    assert out["tpr/0"] == pytest.approx(1.0)
    assert out["tpr/1"] == pytest.approx(1 / 3)
    assert out["eo_diff"] == pytest.approx(2 / 3)
    assert out["eo_ratio"] == pytest.approx(1 / 3)
    assert out["eo_groups_excluded"] == 0
    assert all(isinstance(v, float) for v in out.values())


def test_hand_example_top_q():
    # q = 1/3 of all 9 rows: cutoff index ceil((2/3) * 8) = 6 in sorted order.
    # sorted scores .1 .2 .3 .4 .55 .6 .8 .9 .99 -> cutoff .8: invite idx 0, 5, 8 (3 of 9).
    # sorted labels 0 .1 .2 .4 .5 .6 .7 .8 .9  -> cutoff .7: qualified idx 0, 4, 5.
    assert top_q_cutoff(SCORES, 1 / 3) == 0.8
    assert top_q_cutoff(LABELS, 1 / 3) == 0.7
    out = output_fairness(SCORES, LABELS, GROUPS, top_q=1 / 3)
    assert out["selection_rate/0"] == pytest.approx(0.25)  # idx 0
    assert out["selection_rate/1"] == pytest.approx(0.25)  # idx 5
    assert out["dp_diff"] == pytest.approx(0.0)
    assert out["dp_ratio"] == pytest.approx(1.0)
    assert out["tpr/0"] == pytest.approx(1.0)  # idx 0 qualified and invited
    assert out["tpr/1"] == pytest.approx(0.5)  # idx 4 missed, idx 5 invited
    assert out["eo_diff"] == pytest.approx(0.5)
    # Regression keys do not depend on the decision rule.
    assert out["mae_gap"] == pytest.approx(0.2125)
    # The unknown row takes part in the cutoff (pool-wide shortlist) but in no group.
    assert out["n_unknown"] == 1


def test_top_q_keeps_ties_and_the_right_count():
    v = np.arange(100.0)
    for q in (0.1, 0.25, 0.5, 1.0):
        kept = (v >= top_q_cutoff(v, q)).sum()
        assert q * 100 <= kept <= q * 100 + 1
    assert (np.array([1, 2, 2, 2, 3]) >= top_q_cutoff([1, 2, 2, 2, 3], 0.4)).sum() == 4
    with pytest.raises(ValueError, match="top_q"):
        top_q_cutoff(v, 0.0)


def test_three_groups_and_group_without_qualified():
    #  group 0: scores .9 .8 labels .9 .2 -> selection 1,   qualified {.9} invited -> TPR 1
    #  group 1: scores .7 .2 labels .6 .7 -> selection 1/2, qualified both, one    -> TPR 1/2
    #  group 2: scores .1 .3 labels .1 .2 -> selection 0,   nobody qualified       -> excluded
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.3]
    labels = [0.9, 0.2, 0.6, 0.7, 0.1, 0.2]
    groups = [0, 0, 1, 1, 2, 2]
    out = output_fairness(scores, labels, groups, threshold=0.5)
    assert [out[f"selection_rate/{g}"] for g in range(3)] == pytest.approx([1.0, 0.5, 0.0])
    assert out["dp_diff"] == pytest.approx(1.0)
    assert out["dp_ratio"] == pytest.approx(0.0)
    assert out["tpr/0"] == 1.0 and out["tpr/1"] == 0.5 and math.isnan(out["tpr/2"])
    assert out["eo_diff"] == pytest.approx(0.5)
    assert out["eo_groups_excluded"] == 1
    assert out["n_unknown"] == 0


def test_num_groups_gives_stable_keys_and_edge_cases():
    out = output_fairness([0.9, 0.1], [0.9, 0.1], [0, 0], threshold=0.5, num_groups=2)
    assert out["n/1"] == 0 and math.isnan(out["mae/1"]) and math.isnan(out["tpr/1"])
    # One group present: nothing to compare.
    assert math.isnan(out["dp_diff"]) and math.isnan(out["eo_diff"]) and math.isnan(out["mae_gap"])
    # Nobody invited: the difference is 0 but the ratio is 0/0 -> NaN.
    out = output_fairness([0.1, 0.2], [0.9, 0.9], [0, 1], threshold=0.5)
    assert out["dp_diff"] == 0.0 and math.isnan(out["dp_ratio"])
    # All unknown: only counts.
    out = output_fairness([0.1, 0.2], [0.9, 0.9], [-1, -1], threshold=0.5)
    assert out["n_unknown"] == 2 and math.isnan(out["dp_diff"])
    with pytest.raises(ValueError, match="exactly one"):
        output_fairness([0.1], [0.1], [0], threshold=0.5, top_q=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        output_fairness([0.1], [0.1], [0])
    with pytest.raises(ValueError, match="out of range"):
        output_fairness([0.1], [0.1], [2], threshold=0.5, num_groups=2)
    with pytest.raises(ValueError, match=">= -1"):
        output_fairness([0.1], [0.1], [-2], threshold=0.5)


def _random_data(seed, n=400, num_groups=3, unknown=0.1):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, n)
    labels = rng.random(n)
    # Score depends on the group, so the gaps are not trivially zero.
    scores = np.clip(labels + 0.15 * groups + rng.normal(0, 0.2, n), 0, 1)
    groups[rng.random(n) < unknown] = -1
    return scores, labels, groups


@pytest.mark.parametrize("num_groups", [2, 3])
@pytest.mark.parametrize("rule", [{"threshold": 0.6}, {"top_q": 0.2}])
def test_matches_fairlearn(num_groups, rule):
    for seed in range(3):
        scores, labels, groups = _random_data(seed, num_groups=num_groups)
        out = output_fairness(scores, labels, groups, **rule)
        if "threshold" in rule:
            invite, qualified = scores >= rule["threshold"], labels >= rule["threshold"]
        else:
            k = int(round(rule["top_q"] * scores.size))  # distinct values: exact top-k
            invite = scores >= np.sort(scores)[-k]
            qualified = labels >= np.sort(labels)[-k]
        known = groups != -1
        y, d, a = qualified[known].astype(int), invite[known].astype(int), groups[known]
        assert out["dp_diff"] == pytest.approx(
            demographic_parity_difference(y, d, sensitive_features=a)
        )
        assert out["dp_ratio"] == pytest.approx(
            demographic_parity_ratio(y, d, sensitive_features=a)
        )
        frame = MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=d, sensitive_features=a)
        assert out["eo_diff"] == pytest.approx(frame.difference(method="between_groups"))
        for g, tpr in frame.by_group.items():
            assert out[f"tpr/{g}"] == pytest.approx(tpr)
        assert out["n_unknown"] == (~known).sum()


def test_binary_ratios_match_torchmetrics_binary_fairness():
    scores, labels, groups = _random_data(5, num_groups=2, unknown=0.0)
    out = output_fairness(scores, labels, groups, threshold=0.5)
    tm = BinaryFairness(num_groups=2, task="all", threshold=0.5)
    # torchmetrics thresholds `preds > 0.5`; feed the already-made 0/1 decisions.
    tm.update(
        torch.tensor(scores >= 0.5, dtype=torch.float),
        torch.tensor(labels >= 0.5, dtype=torch.long),
        torch.tensor(groups),
    )
    res = {k[:2]: float(v) for k, v in tm.compute().items()}
    assert out["dp_ratio"] == pytest.approx(res["DP"])
    assert out["eo_ratio"] == pytest.approx(res["EO"])
    assert out["dp_diff"] > 0  # the planted group shift shows as a gap


@pytest.mark.parametrize("rule", [{"threshold": 0.5}, {"top_q": 0.3}])
def test_metric_accumulates_like_functional_on_concatenation(rule):
    scores, labels, groups = _random_data(9, n=300)
    metric = OutputFairness(num_groups=3, **rule)
    for chunk in np.array_split(np.arange(300), 4):
        metric.update(
            torch.tensor(scores[chunk], dtype=torch.float32),
            torch.tensor(labels[chunk], dtype=torch.float32),
            torch.tensor(groups[chunk]),
        )
    got = metric.compute()
    want = output_fairness(
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.float32),
        torch.tensor(groups),
        num_groups=3,
        **rule,
    )
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], nan_ok=True), key
    # reset() forgets every row.
    metric.reset()
    metric.update(torch.tensor([0.9]), torch.tensor([0.9]), torch.tensor([0]))
    assert metric.compute()["n/0"] == 1.0


def test_metric_rejects_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        OutputFairness(num_groups=2)
    metric = OutputFairness(num_groups=2, threshold=0.5)
    with pytest.raises(ValueError, match="groups must lie"):
        metric.update(torch.tensor([0.1]), torch.tensor([0.1]), torch.tensor([2]))


def test_groups_of_too_few_people_are_suppressed():
    """The reported leak: a one-person test group published that person's gender and mean
    score. Groups under min_group_size people are NaN and left out of the gaps."""
    scores = [0.9, 0.8, 0.2, 0.3, 0.5, 0.6]
    labels = [1.0, 1.0, 0.0, 0.0, 0.5, 0.5]
    groups = [0, 0, 1, 1, 1, 1]
    people = [7, 7, 1, 2, 3, 3]  # group 0 is one person with two clips
    out = output_fairness(scores, labels, groups, threshold=0.5, num_groups=2,
                          people=people, min_group_size=2)
    assert math.isnan(out["n/0"]) and math.isnan(out["mean_score/0"])
    assert math.isnan(out["mae/0"]) and math.isnan(out["selection_rate/0"])
    assert out["n/1"] == 4 and out["groups_suppressed"] == 1
    assert math.isnan(out["dp_diff"])  # one group left: nothing to compare
    kept = output_fairness(scores, labels, groups, threshold=0.5, num_groups=2, people=people)
    assert kept["n/0"] == 2 and kept["groups_suppressed"] == 0 and kept["dp_diff"] > 0
    by_rows = output_fairness(scores, labels, groups, threshold=0.5, num_groups=2,
                              min_group_size=3)  # without people: rows count
    assert math.isnan(by_rows["n/0"]) and by_rows["n/1"] == 4
