"""Post-hoc probes: metric correctness, leakage recovery, identity hygiene, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from fair_lightning.probes import (
    ProbeResult,
    balanced_accuracy,
    cluster_bootstrap_balanced_accuracy,
    probe_attribute,
)


def make_split(rng, n_ids, clips, dim=32, shift=0.0, num_classes=2, first_id=0):
    """Clips of `n_ids` people; the attribute is constant per person, `shift` plants it."""
    attr = rng.integers(0, num_classes, n_ids)
    ids = np.repeat(np.arange(first_id, first_id + n_ids), clips)
    y = np.repeat(attr, clips)
    x = rng.normal(size=(ids.size, dim))
    x[np.arange(ids.size), y] += shift  # class k pushes feature k
    return x.astype(np.float32), y, ids


def fit_eval(rng, shift, num_classes=2, fit_ids=100, eval_ids=60, clips=8, dim=32):
    fit = make_split(rng, fit_ids, clips, dim, shift, num_classes)
    ev = make_split(rng, eval_ids, clips, dim, shift, num_classes, first_id=10_000)
    return (*fit, *ev)


# --------------------------------------------------------------------------- functional
@pytest.mark.parametrize("num_classes", [2, 3])
def test_balanced_accuracy_matches_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    for n in (5, 50, 500):
        y_true = rng.integers(0, num_classes, n)
        y_true[:num_classes] = np.arange(num_classes)  # every class has support
        y_pred = rng.integers(0, num_classes, n)
        got = balanced_accuracy(y_true, y_pred, num_classes)
        assert got == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_balanced_accuracy_ignores_classes_absent_from_truth():
    # Class 2 has no support: mean recall over {0, 1} only = (1/2 + 1) / 2.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx(0.75)
    assert balanced_accuracy(torch.tensor(y_true), torch.tensor(y_pred), 3) == pytest.approx(0.75)


def test_balanced_accuracy_rejects_out_of_range():
    with pytest.raises(ValueError, match="must lie in"):
        balanced_accuracy(np.array([0, 2]), np.array([0, 1]), 2)


def test_cluster_bootstrap_equals_naive_identity_resampling():
    """The vectorised counts give what resampling people and re-scoring would give."""
    rng = np.random.default_rng(1)
    groups = np.repeat([f"id{i}" for i in range(15)], rng.integers(1, 6, 15))
    y_true = rng.integers(0, 3, groups.size)
    y_pred = np.where(rng.random(groups.size) < 0.6, y_true, rng.integers(0, 3, groups.size))
    low, high = cluster_bootstrap_balanced_accuracy(
        y_true, y_pred, groups, 3, n_resamples=200, seed=7
    )
    # Same draws as the implementation: identities indexed in sorted order.
    uniq, gid = np.unique(groups, return_inverse=True)
    draws = np.random.default_rng(7).integers(0, uniq.size, size=(200, uniq.size))
    naive = []
    for row in draws:
        rows = np.concatenate([np.flatnonzero(gid == g) for g in row])
        naive.append(balanced_accuracy_score(y_true[rows], y_pred[rows]))
    assert (low, high) == pytest.approx(tuple(np.percentile(naive, [2.5, 97.5])))


def test_bootstrap_interval_contains_estimate_and_widens_with_fewer_identities():
    rng = np.random.default_rng(2)

    def interval(n_ids):
        groups = np.repeat(np.arange(n_ids), 10)
        y_true = np.repeat(rng.integers(0, 2, n_ids), 10)
        # Per-person correctness: clips of one person are right or wrong together.
        right = np.repeat(rng.random(n_ids) < 0.7, 10)
        y_pred = np.where(right, y_true, 1 - y_true)
        est = balanced_accuracy(y_true, y_pred, 2)
        low, high = cluster_bootstrap_balanced_accuracy(y_true, y_pred, groups, 2, seed=0)
        assert low <= est <= high
        return high - low

    wide, narrow = interval(20), interval(400)
    assert wide > 2 * narrow


def test_cluster_interval_is_wider_than_clip_interval_for_clustered_errors():
    """Treating correlated clips as independent would understate the uncertainty."""
    rng = np.random.default_rng(3)
    n_ids, clips = 40, 10
    y_true = np.repeat(rng.integers(0, 2, n_ids), clips)
    right = np.repeat(rng.random(n_ids) < 0.7, clips)
    y_pred = np.where(right, y_true, 1 - y_true)
    by_person = np.repeat(np.arange(n_ids), clips)
    by_clip = np.arange(n_ids * clips)  # every clip its own cluster
    lo_p, hi_p = cluster_bootstrap_balanced_accuracy(y_true, y_pred, by_person, 2)
    lo_c, hi_c = cluster_bootstrap_balanced_accuracy(y_true, y_pred, by_clip, 2)
    assert hi_p - lo_p > 2 * (hi_c - lo_c)


# --------------------------------------------------------------------------- probes
@pytest.mark.parametrize("num_classes", [2, 3])
def test_probes_recover_planted_attribute(num_classes):
    data = fit_eval(np.random.default_rng(10 + num_classes), shift=3.0, num_classes=num_classes)
    res = probe_attribute(*data, num_classes, bootstrap=500)
    assert set(res) == {"linear", "mlp"}
    for r in res.values():
        assert isinstance(r, ProbeResult)
        assert r.chance == pytest.approx(1 / num_classes)
        assert r.bal_acc > 0.85
        assert r.bal_acc_ci_low > r.chance + 0.2
        assert r.bal_acc_ci_low <= r.bal_acc <= r.bal_acc_ci_high
        assert r.roc_auc > 0.9 and r.macro_f1 > 0.8
        assert r.n_fit == 800 and r.n_eval == 480 and r.n_unknown == 0


def test_probes_on_noise_sit_at_chance():
    data = fit_eval(np.random.default_rng(20), shift=0.0)
    for r in probe_attribute(*data, 2, bootstrap=500).values():
        assert r.bal_acc_ci_low <= 0.5 <= r.bal_acc_ci_high
        assert abs(r.bal_acc - 0.5) < 0.1
        assert abs(r.roc_auc - 0.5) < 0.12


def test_mlp_finds_nonlinear_leakage_the_linear_probe_misses():
    # XOR of two features: invisible to a linear probe, easy for one hidden layer.
    rng = np.random.default_rng(30)

    def split(n_ids, first_id):
        ids = np.repeat(np.arange(first_id, first_id + n_ids), 6)
        x = rng.normal(size=(ids.size, 8)).astype(np.float32)
        y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
        return x, y, ids

    res = probe_attribute(*split(150, 0), *split(60, 1000), 2, bootstrap=200)
    assert res["linear"].bal_acc_ci_low < 0.5 < res["linear"].bal_acc_ci_high
    assert res["mlp"].bal_acc > 0.8


def test_unknown_rows_are_dropped_and_counted():
    rng = np.random.default_rng(40)
    fx, fy, fg, ex, ey, eg = fit_eval(rng, shift=3.0, fit_ids=60, eval_ids=30)
    fy, ey = fy.copy(), ey.copy()
    fy[:13] = -1
    ey[:7] = -1
    res = probe_attribute(fx, fy, fg, ex, ey, eg, 2, bootstrap=100)
    for r in res.values():
        assert r.n_unknown == 20
        assert r.n_fit == fy.size - 13 and r.n_eval == ey.size - 7
    # Unknown rows carry no weight: same metrics as removing them beforehand.
    kf, ke = fy != -1, ey != -1
    ref = probe_attribute(fx[kf], fy[kf], fg[kf], ex[ke], ey[ke], eg[ke], 2, bootstrap=100)
    for name in res:
        got, want = res[name].as_dict(), ref[name].as_dict()
        got.pop("n_unknown"), want.pop("n_unknown")
        assert got == pytest.approx(want)


def test_shared_identity_raises():
    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(50), shift=1.0, fit_ids=20, eval_ids=10)
    eg = eg.copy()
    eg[-1] = fg[0]
    with pytest.raises(ValueError, match="share 1 identities"):
        probe_attribute(fx, fy, fg, ex, ey, eg, 2)
    # String identities too.
    with pytest.raises(ValueError, match="identity-disjoint"):
        probe_attribute(fx, fy, fg.astype(str), ex, ey, eg.astype(str), 2)


def test_single_fit_class_raises():
    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(60), shift=1.0, fit_ids=20, eval_ids=10)
    fy = np.where(fy == 1, -1, fy)  # only class 0 stays known
    with pytest.raises(ValueError, match="at least 2"):
        probe_attribute(fx, fy, fg, ex, ey, eg, 2)


def test_single_eval_class_gives_nan_auc():
    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(70), shift=3.0, fit_ids=40, eval_ids=20)
    keep = ey == 1
    res = probe_attribute(fx, fy, fg, ex[keep], ey[keep], eg[keep], 2, bootstrap=100)
    for r in res.values():
        assert math.isnan(r.roc_auc)
        assert r.majority_rate == 1.0
        assert 0.0 <= r.bal_acc <= 1.0


def test_deterministic_under_seed_and_global_rng_untouched():
    data = fit_eval(np.random.default_rng(80), shift=0.7, fit_ids=60, eval_ids=30)
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    first = {k: v.as_dict() for k, v in probe_attribute(*data, 2, seed=3, bootstrap=200).items()}
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    torch.rand(5)  # move the global stream: results must not depend on it
    again = {k: v.as_dict() for k, v in probe_attribute(*data, 2, seed=3, bootstrap=200).items()}
    assert first == again


def test_majority_rate_and_macro_f1_reference():
    from sklearn.metrics import f1_score

    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(90), shift=1.0, fit_ids=40, eval_ids=30)
    res = probe_attribute(fx, fy, fg, ex, ey, eg, 2, bootstrap=0)
    r = res["linear"]
    assert r.majority_rate == pytest.approx(np.bincount(ey).max() / ey.size)
    assert math.isnan(r.bal_acc_ci_low) and math.isnan(r.bal_acc_ci_high)
    # Re-derive the linear probe's predictions to pin macro-F1.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(fx)
    clf = LogisticRegression(class_weight="balanced", max_iter=1000).fit(
        sc.transform(fx).astype(np.float32), fy
    )
    pred = clf.predict(sc.transform(ex).astype(np.float32))
    assert r.macro_f1 == pytest.approx(f1_score(ey, pred, average="macro"))
    assert r.bal_acc == pytest.approx(balanced_accuracy_score(ey, pred))


def test_accepts_tensors_and_few_fit_identities():
    rng = np.random.default_rng(100)
    fx, fy, fg, ex, ey, eg = fit_eval(rng, shift=3.0, fit_ids=1, eval_ids=4, clips=20)
    fy = np.arange(fy.size) % 2  # one person, both classes (no identity split possible)
    res = probe_attribute(
        torch.from_numpy(fx),
        torch.from_numpy(fy),
        fg,
        torch.from_numpy(ex),
        ey,
        eg,
        2,
        mlp_max_epochs=30,
    )
    assert res["mlp"].n_fit == 20 and res["mlp"].n_eval == 80
    assert set(res["mlp"].as_dict()) == {
        "bal_acc",
        "bal_acc_ci_low",
        "bal_acc_ci_high",
        "macro_f1",
        "roc_auc",
        "chance",
        "majority_rate",
        "n_fit",
        "n_eval",
        "n_unknown",
    }
