"""The attacker suite: metric correctness, selection by grouped CV, specificity and
sensitivity, person level, identity hygiene, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from fair_lightning.audit.probes import (
    AttackerResult,
    AttackSuite,
    attack_attribute,
    balanced_accuracy,
    cluster_bootstrap_balanced_accuracy,
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


# --------------------------------------------------------------------------- the suite
ALL = ("linear", "kernel", "mlp", "svm")


@pytest.mark.parametrize("num_classes", [2, 3])
def test_suite_recovers_planted_attribute(num_classes):
    data = fit_eval(np.random.default_rng(10 + num_classes), shift=3.0, num_classes=num_classes,
                    fit_ids=60, eval_ids=40, clips=4)
    res = attack_attribute(*data, num_classes, bootstrap=300)
    names = {r.attacker for r in res.attackers}
    fams = ("linear", "kernel")
    assert names == {*fams, *(f"person_{k}_{f}" for k in ("vote", "mean") for f in fams)}
    for r in res.attackers:
        assert isinstance(r, AttackerResult)
        assert r.chance == pytest.approx(1 / num_classes)
        assert r.bal_acc > 0.8, r
        assert r.bal_acc_ci_low <= r.bal_acc <= r.bal_acc_ci_high
        assert r.n_eval == (160 if r.level == "clip" else 40)
        assert r.n_fit == (60 if r.attacker.startswith("person_mean") else 240)
    assert res.leak["clip"].level == "clip" and res.leak["person"].level == "person"
    assert res.leak["clip"].bal_acc_ci_low > 1 / num_classes + 0.2


@pytest.mark.parametrize("num_classes", [2, 3])
def test_every_family_recovers_planted_attribute(num_classes):
    data = fit_eval(np.random.default_rng(12 + num_classes), shift=3.0, num_classes=num_classes,
                    fit_ids=40, eval_ids=20, clips=4, dim=8)
    res = attack_attribute(*data, num_classes, families=ALL, person_level=False, bootstrap=0)
    assert [r.attacker for r in res.attackers] == list(ALL)
    for r in res.attackers:
        assert r.bal_acc > 0.85, r
        assert r.roc_auc > 0.9 and r.macro_f1 > 0.8


def test_leakage_is_the_attacker_cross_validation_ranks_best():
    data = fit_eval(np.random.default_rng(11), shift=0.4, fit_ids=80, eval_ids=40, clips=4)
    res = attack_attribute(*data, 2, bootstrap=0)
    for level in ("clip", "person"):
        pool = [r for r in res.attackers if r.level == level]
        assert res.leak[level] is max(pool, key=lambda r: r.cv_bal_acc)
        assert 0.0 <= res.leak[level].cv_bal_acc <= 1.0


def test_suite_on_noise_sits_at_chance():
    """Specificity: nothing planted, so both selected attackers' intervals hold chance and
    no attacker strays far from it."""
    data = fit_eval(np.random.default_rng(20), shift=0.0, fit_ids=100, eval_ids=60, clips=4)
    res = attack_attribute(*data, 2, bootstrap=500)
    for r in res.leak.values():
        assert r.bal_acc_ci_low <= 0.5 <= r.bal_acc_ci_high, r
    assert np.mean([abs(r.bal_acc - 0.5) for r in res.attackers]) < 0.06
    assert np.mean([r.cv_bal_acc for r in res.attackers]) < 0.56


def ring(rng, n_ids, clips=4, first_id=0, dim=8):
    """Gender as the radius of a ring in two dimensions (1 vs 2, random angle); no linear
    read-out of any feature can tell the radii apart."""
    g = rng.integers(0, 2, n_ids)
    ids = np.repeat(np.arange(first_id, first_id + n_ids), clips)
    y = np.repeat(g, clips)
    theta = rng.uniform(0, 2 * np.pi, ids.size)
    radius = 1.0 + y + 0.15 * rng.normal(size=ids.size)
    x = rng.normal(size=(ids.size, dim))
    x[:, 0], x[:, 1] = radius * np.cos(theta), radius * np.sin(theta)
    return x.astype(np.float32), y, ids


def test_sensitivity_the_suite_finds_a_ring_the_linear_attacker_misses():
    rng = np.random.default_rng(30)
    res = attack_attribute(*ring(rng, 120), *ring(rng, 60, first_id=1000), 2, bootstrap=300)
    lin = res["linear"]
    assert lin.bal_acc_ci_low <= 0.5 <= lin.bal_acc_ci_high
    assert res.leak["clip"].attacker == "kernel"
    assert res.leak["clip"].bal_acc > 0.85
    assert res.leak["clip"].bal_acc_ci_low > lin.bal_acc_ci_high
    assert res.leak["person"].bal_acc > 0.9


def test_person_level_finds_what_single_clips_hide():
    """A person-level attribute under heavy clip noise: pooling a person's clips reads it
    much better than any single clip does."""
    rng = np.random.default_rng(31)

    def split(n_ids, first_id):
        x, y, ids = make_split(rng, n_ids, 16, dim=8, first_id=first_id)
        person = 0.5 * rng.normal(size=(n_ids, 8))[ids - first_id]
        person[:, 0] += np.where(y == 1, 1.0, -1.0)
        return (person + 3.0 * x).astype(np.float32), y, ids

    res = attack_attribute(*split(150, 0), *split(150, 1000), 2, families=("linear",),
                           bootstrap=300)
    assert res.leak["person"].bal_acc > res.leak["clip"].bal_acc + 0.1
    assert res["person_vote_linear"].bal_acc > res["linear"].bal_acc


def test_kernel_attackers_match_scikit_learn():
    """Cross-checks on the same rows and grid points: the kernel ridge classifier is
    scikit-learn's `KernelRidge` with balanced sample weights (same decision values), the SVM
    family is `SVC(kernel="rbf")` (same decision values, to libsvm's tolerance), and the
    two kernel machines reach the same accuracy on a ring only a kernel can read."""
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.svm import SVC

    from fair_lightning.audit.attackers import (
        KernelRidgeFamily,
        SVMFamily,
        _pm_targets,
        balanced_weights,
    )

    rng = np.random.default_rng(32)
    x, y, _ = ring(rng, 50)
    z, _, _ = ring(rng, 40)
    # float64 on both sides: small bandwidths with a small ridge amplify float32 rounding
    x, z = x.astype(np.float64), z.astype(np.float64)
    krr, svm = KernelRidgeFamily(), SVMFamily()
    for num_classes, yy in ((2, y), (3, (y + (x[:, 2] > 0.5)).astype(int))):
        for p in krr.grid(x.shape[1]):
            ref = KernelRidge(alpha=p["alpha"], kernel="rbf", gamma=p["gamma"]).fit(
                x, _pm_targets(yy, num_classes), sample_weight=balanced_weights(yy, num_classes))
            np.testing.assert_allclose(krr.fit(x, yy, p, num_classes)(z), ref.predict(z),
                                       rtol=1e-5, atol=1e-6, err_msg=str(p))
        for p in svm.grid(x.shape[1]):
            ref = SVC(kernel="rbf", gamma=p["gamma"], C=p["C"], class_weight="balanced",
                      decision_function_shape="ovr").fit(x, yy).decision_function(z)
            want = ref if num_classes == 3 else np.stack([-ref, ref], 1)
            # libsvm stops at a tolerance of 1e-3: values agree to about that
            np.testing.assert_allclose(svm.fit(x, yy, p, num_classes)(z), want, atol=2e-3,
                                       err_msg=str(p))
    res = attack_attribute(*ring(rng, 100), *ring(rng, 60, first_id=1000), 2,
                           families=("kernel", "svm"), person_level=False, bootstrap=0)
    assert res["kernel"].bal_acc > 0.85 and res["svm"].bal_acc > 0.85
    assert abs(res["kernel"].bal_acc - res["svm"].bal_acc) < 0.05


def test_batched_mlps_do_not_interact():
    """Every network of the batch trains on its own rows only: changing one network's rows
    leaves the other's trained weights exactly as they were."""
    from fair_lightning.audit.attackers import MLPFamily

    rng = np.random.default_rng(33)
    x, y, _ = make_split(rng, 40, 2, dim=6, shift=1.0)
    fam = MLPFamily()
    a = fam._train(x, y, [np.arange(40), np.arange(40, 80)], [1e-3, 1e-1], 16, (5,), 2, 0)
    b = fam._train(x, y, [np.arange(40), np.arange(0, 80, 2)], [1e-3, 1e-1], 16, (5,), 2, 0)
    for pa, pb in zip(a[5], b[5], strict=True):
        assert torch.equal(pa[0], pb[0])
        assert not torch.equal(pa[1], pb[1])


def test_unknown_rows_are_dropped_and_counted():
    rng = np.random.default_rng(40)
    fx, fy, fg, ex, ey, eg = fit_eval(rng, shift=3.0, fit_ids=60, eval_ids=30, clips=4)
    fy, ey = fy.copy(), ey.copy()
    fy[:13] = -1
    ey[:7] = -1
    res = attack_attribute(fx, fy, fg, ex, ey, eg, 2, bootstrap=100)
    clip = res["linear"]
    assert clip.n_unknown == 20
    assert clip.n_fit == fy.size - 13 and clip.n_eval == ey.size - 7
    # Unknown rows carry no weight: same metrics as removing them beforehand.
    kf, ke = fy != -1, ey != -1
    ref = attack_attribute(fx[kf], fy[kf], fg[kf], ex[ke], ey[ke], eg[ke], 2, bootstrap=100)
    for got, want in zip(res.attackers, ref.attackers, strict=True):
        got, want = got.as_dict(), want.as_dict()
        got.pop("n_unknown"), want.pop("n_unknown")
        assert got == pytest.approx(want)


def test_shared_identity_raises():
    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(50), shift=1.0, fit_ids=20, eval_ids=10)
    eg = eg.copy()
    eg[-1] = fg[0]
    with pytest.raises(ValueError, match="share 1 identities"):
        attack_attribute(fx, fy, fg, ex, ey, eg, 2)
    # String identities too, and through a fitted suite.
    with pytest.raises(ValueError, match="identity-disjoint"):
        AttackSuite(2, families=("linear",)).fit(fx, fy, fg.astype(str)).evaluate(
            ex, ey, eg.astype(str))


def test_single_fit_class_raises():
    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(60), shift=1.0, fit_ids=20, eval_ids=10)
    fy = np.where(fy == 1, -1, fy)  # only class 0 stays known
    with pytest.raises(ValueError, match="at least 2"):
        attack_attribute(fx, fy, fg, ex, ey, eg, 2)


def test_bad_families_and_folds_raise():
    with pytest.raises(ValueError, match="subset"):
        AttackSuite(2, families=("linear", "forest"))
    with pytest.raises(ValueError, match="cv_folds"):
        AttackSuite(2, cv_folds=1)


def test_single_eval_class_gives_nan_auc():
    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(70), shift=3.0, fit_ids=40,
                                      eval_ids=20, clips=4)
    keep = ey == 1
    res = attack_attribute(fx, fy, fg, ex[keep], ey[keep], eg[keep], 2, families=ALL,
                           bootstrap=100)
    for r in res.attackers:
        assert math.isnan(r.roc_auc)
        assert r.majority_rate == 1.0
        assert 0.0 <= r.bal_acc <= 1.0


def test_deterministic_under_seed_and_global_rng_untouched():
    data = fit_eval(np.random.default_rng(80), shift=0.7, fit_ids=30, eval_ids=20, clips=4,
                    dim=8)
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    first = [r.as_dict() for r in attack_attribute(*data, 2, families=ALL, seed=3,
                                                   bootstrap=200).attackers]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    torch.rand(5)  # move the global stream: results must not depend on it
    again = [r.as_dict() for r in attack_attribute(*data, 2, families=ALL, seed=3,
                                                   bootstrap=200).attackers]
    assert first == again


def test_macro_f1_and_majority_rate_reference():
    from sklearn.metrics import f1_score
    from sklearn.svm import SVC

    fx, fy, fg, ex, ey, eg = fit_eval(np.random.default_rng(90), shift=1.0, fit_ids=40,
                                      eval_ids=30, clips=4)
    suite = AttackSuite(2, families=("svm",), person_level=False).fit(fx, fy, fg)
    r = suite.evaluate(ex, ey, eg, bootstrap=0)["svm"]
    assert r.majority_rate == pytest.approx(np.bincount(ey).max() / ey.size)
    assert math.isnan(r.bal_acc_ci_low) and math.isnan(r.bal_acc_ci_high)
    # Re-derive the chosen SVM's predictions to pin the metrics.
    p = suite.fitted[0].cand.params
    mean, std = fx.mean(0), fx.std(0)
    pred = SVC(kernel="rbf", gamma=p["gamma"], C=p["C"], class_weight="balanced").fit(
        (fx - mean) / std, fy).predict((ex - mean) / std)
    assert r.macro_f1 == pytest.approx(f1_score(ey, pred, average="macro"), abs=0.02)
    assert r.bal_acc == pytest.approx(balanced_accuracy_score(ey, pred), abs=0.02)


def test_one_fitted_suite_scores_several_eval_splits():
    rng = np.random.default_rng(95)
    fx, fy, fg, ex, ey, eg = fit_eval(rng, shift=1.0, fit_ids=40, eval_ids=20, clips=4)
    suite = AttackSuite(2).fit(fx, fy, fg)
    a = suite.evaluate(ex, ey, eg, bootstrap=50)
    b = suite.evaluate(ex[::-1], ey[::-1], eg[::-1], bootstrap=50)  # same people, reordered
    assert [r.bal_acc for r in a.attackers] == pytest.approx([r.bal_acc for r in b.attackers])


def test_accepts_tensors_and_one_fit_identity():
    rng = np.random.default_rng(100)
    fx, fy, fg, ex, ey, eg = fit_eval(rng, shift=3.0, fit_ids=1, eval_ids=4, clips=20)
    fy = np.arange(fy.size) % 2  # one person, both classes: no grouped CV possible
    res = attack_attribute(torch.from_numpy(fx), torch.from_numpy(fy), fg,
                           torch.from_numpy(ex), ey, eg, 2)
    r = res["kernel"]
    assert r.n_fit == 20 and r.n_eval == 80
    assert math.isnan(r.cv_bal_acc)  # untuned: nothing to cross-validate on
    assert res.leak["clip"].attacker == "linear"
    assert set(r.as_dict()) == set(AttackerResult.NUMERIC)


def test_large_kernel_fits_use_nystroem_which_is_exact_with_every_row_a_landmark():
    from fair_lightning.audit.attackers import KernelRidgeFamily

    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 8))
    y = ((x[:, 0] * x[:, 1] + 0.3 * rng.normal(size=n)) > 0).astype(int)  # not linear
    folds = [(np.setdiff1d(np.arange(n), np.arange(i, n, 4)), np.arange(i, n, 4))
             for i in range(4)]
    exact = KernelRidgeFamily().cross_validate(x, y, folds, 2)
    approx = KernelRidgeFamily()
    approx.max_exact_rows = 100  # n is above it: the Nystroem path
    approx.landmarks = n
    for a, b in zip(exact, approx.cross_validate(x, y, folds, 2), strict=True):
        assert (a.oof.argmax(1) == b.oof.argmax(1)).mean() > 0.99, a.params
    approx.landmarks = 50  # fewer landmarks: an approximation, still far above chance
    best = max((c.oof.argmax(1) == y).mean() for c in approx.cross_validate(x, y, folds, 2))
    assert best > 0.6
    fitted = approx.fit(x, y, exact[0].params, 2)(x[:5])
    assert fitted.shape == (5, 2) and np.isfinite(fitted).all()


def test_a_fitted_nystroem_map_keeps_its_own_bandwidth_only():
    """Fitted suites are kept for the test audit: their feature maps must not hold the
    landmarks' m x m distances (8 MB at 1,000 landmarks, per refit) or other bandwidths."""
    from fair_lightning.audit.attackers import KernelRidgeFamily, SVMFamily, _Nystroem

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    nys = _Nystroem(x, 50, seed=0)
    want = nys.features(x[:7], 0.3).numpy()
    nys.features(x[:7], 0.1)
    nys.keep_only(0.3)
    assert nys.d2_mm is None and list(nys._proj) == [0.3]
    np.testing.assert_array_equal(nys.features(x[:7], 0.3).numpy(), want)
    y = (x[:, 0] > 0).astype(int)
    for fam in (KernelRidgeFamily(), SVMFamily()):
        fam.max_exact_rows, fam.landmarks = 100, 50  # the Nystroem path
        params = fam.grid(6)[0]
        predict = fam.fit(x, y, params, 2)
        kept = [c.cell_contents for c in predict.__closure__
                if isinstance(c.cell_contents, _Nystroem)]
        assert len(kept) == 1 and kept[0].d2_mm is None
        np.testing.assert_array_equal(predict(x[:9]), fam.fit(x, y, params, 2)(x[:9]))


def test_the_large_svm_solves_its_squared_hinge_problem_exactly():
    """_l2svm's solution is the optimum: the gradient of its objective vanishes, for two
    classes and for one-vs-rest, at every C of the grid (each warm started)."""
    from fair_lightning.audit.attackers import _l2svm, balanced_weights

    rng = np.random.default_rng(1)
    phi = rng.normal(size=(600, 20))
    for k, y in ((2, (phi[:, 0] + 0.8 * rng.normal(size=600) > 0.7).astype(int)),
                 (3, np.digitize(phi[:, 1] + 0.5 * rng.normal(size=600), [-0.5, 0.5]))):
        rows = np.arange(0, 600, 2)  # a fold: every other row
        cs = (1.0, 10.0, 100.0, 1000.0)
        w = balanced_weights(y[rows], k)
        f = np.c_[phi[rows], np.ones(len(rows))]
        fits = _l2svm(torch.from_numpy(phi), y[rows], k, cs, rows=torch.from_numpy(rows))
        for c, beta in zip(cs, (b.numpy() for b in fits), strict=True):
            assert beta.shape == (21, k)
            for cls in ([1] if k == 2 else range(k)):
                t = np.where(y[rows] == cls, 1.0, -1.0)
                slack = np.maximum(0.0, 1.0 - t * (f @ beta[:, cls]))
                reg = np.r_[np.ones(20), 1e-8]
                grad = reg * beta[:, cls] - 2 * c * f.T @ (w * t * slack)
                scale = 1.0 + 2 * c * np.abs(f.T @ (w * t * slack)).max()
                assert np.abs(grad).max() < 1e-6 * scale, (k, c, cls)
            if k == 2:
                np.testing.assert_array_equal(beta[:, 0], -beta[:, 1])


def test_large_svm_fits_use_kernel_features_and_read_as_much_as_the_exact_svm():
    """Beyond max_exact_rows no n x n kernel: the squared-hinge SVM on Nystroem features
    selects a point that reads a nonlinear attribute as well as libsvm on the exact kernel."""
    from fair_lightning.audit.attackers import SVMFamily

    rng = np.random.default_rng(0)
    n = 800
    x = rng.normal(size=(n, 8))
    y = ((x[:, 0] * x[:, 1] + 0.3 * rng.normal(size=n)) > 0).astype(int)  # not linear
    folds = [(np.setdiff1d(np.arange(n), np.arange(i, n, 4)), np.arange(i, n, 4))
             for i in range(4)]

    def best(family):
        return max(_ba(y, c.oof) for c in family.cross_validate(x, y, folds, 2))

    exact = best(SVMFamily())
    approx = SVMFamily()
    approx.max_exact_rows = 100  # n is above it: the feature path
    approx.landmarks = 400
    got = best(approx)
    assert exact > 0.75 and abs(got - exact) < 0.03, (exact, got)
    fitted = approx.fit(x, y, {"C": 10.0, "gamma": 1 / 8}, 2)(x[:5])
    assert fitted.shape == (5, 2) and np.isfinite(fitted).all()
    np.testing.assert_allclose(fitted[:, 0], -fitted[:, 1])


def _ba(y, scores):
    from fair_lightning.audit.probes import balanced_accuracy

    return balanced_accuracy(y, scores.argmax(1), 2)
