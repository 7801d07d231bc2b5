"""The erasure stage's plain parts: LEACE, the cross-fitted residual, the task subspace and
the refitted head, judged by the attacker suite where it matters."""

import numpy as np
import pytest
import torch

from fair_lightning.audit.probes import AttackSuite
from fair_lightning.models.erasure import (
    ConceptEraser,
    ErasedHead,
    ErasureError,
    group_means,
    task_subspace,
)


def planted(n_people=160, clips=4, seed=0, nonlinear=0.0):
    """People with a gender; a face proxy z whose first column is gender (+-1) and the rest
    the person's look; h = merit, a linear gender channel, optionally a gender channel in
    the *variance* of a column (no linear trace), and noise."""
    g = torch.Generator().manual_seed(seed)
    gender = torch.randint(0, 2, (n_people,), generator=g)
    look = torch.randn(n_people, 3, generator=g)
    merit = torch.randn(n_people, generator=g)
    pid = torch.arange(n_people).repeat_interleave(clips)
    s = (2.0 * gender - 1.0)[pid]
    z = torch.cat([s[:, None], look[pid] + 0.3 * torch.randn(len(pid), 3, generator=g)], 1)
    noise = torch.randn(len(pid), 5, generator=g)
    h = torch.stack([merit[pid] + 0.3 * noise[:, 0], s + 0.5 * noise[:, 1],
                     0.5 * s + merit[pid] + 0.5 * noise[:, 2],
                     noise[:, 3] * (1.0 + nonlinear * (s > 0)), noise[:, 4]], 1)
    label = torch.sigmoid(merit[pid] + 0.1 * torch.randn(len(pid), generator=g))
    return h, z, pid, gender[pid], label


def attack(x_fit, y_fit, g_fit, x_ev, y_ev, g_ev, families):
    suite = AttackSuite(2, families=families, cv_folds=4, seed=0).fit(x_fit, y_fit, g_fit)
    return suite.evaluate(x_ev, y_ev, g_ev, bootstrap=0)


def test_leace_leaves_no_linear_predictor_of_z():
    h, z, pid, _, _ = planted()
    er = ConceptEraser(residual=False, rank=z.shape[1])
    out = er.fit(h, z, pid).double()
    hc, zc = out - out.mean(0), z.double() - z.double().mean(0)
    cross = hc.T @ zc / len(h)
    assert cross.abs().max() < 1e-6  # float32 round-off; before: > 0.5
    # before: h holds z's first column almost linearly
    before = (h.double() - h.double().mean(0)).T @ zc / len(h)
    assert before.abs().max() > 0.5
    # the module applies the same map to new rows
    assert torch.allclose(er(h.double()), out, atol=1e-10)
    assert er.stats["kept_variance"] == pytest.approx(
        float(out.var(0).sum() / h.double().var(0).sum()), rel=1e-9)


def test_leace_puts_a_linear_gender_channel_at_chance_for_linear_and_person_mean():
    h, z, pid, gender, _ = planted(seed=1)
    h2, z2, pid2, gender2, _ = planted(seed=2)
    pid2 = pid2 + 10_000  # other people
    before = attack(h.numpy(), gender.numpy(), pid.numpy(), h2.numpy(), gender2.numpy(),
                    pid2.numpy(), ("linear",))
    assert before.leak["clip"].bal_acc > 0.95
    er = ConceptEraser(residual=False, rank=1)  # gender is one direction of z
    fit = er.fit(h, z, pid)
    with torch.no_grad():
        ev = er(h2, z2)
    after = attack(fit.numpy(), gender.numpy(), pid.numpy(), ev.numpy(), gender2.numpy(),
                   pid2.numpy(), ("linear",))
    assert after.leak["clip"].bal_acc < 0.6
    assert after["person_mean_linear"].bal_acc < 0.62
    # the merit column survives: the least change
    assert np.corrcoef(fit[:, 0].numpy(), h[:, 0].numpy())[0, 1] > 0.9


def test_a_nonlinear_channel_that_linear_erasure_misses_is_still_found():
    h, z, pid, gender, _ = planted(seed=3, nonlinear=3.0)
    h2, z2, pid2, gender2, _ = planted(seed=4, nonlinear=3.0)
    pid2 = pid2 + 10_000
    er = ConceptEraser(residual=False, rank=1)
    fit = er.fit(h, z, pid).numpy()
    with torch.no_grad():
        ev = er(h2, z2).numpy()
    linear = attack(fit, gender.numpy(), pid.numpy(), ev, gender2.numpy(), pid2.numpy(),
                    ("linear",))
    suite = attack(fit, gender.numpy(), pid.numpy(), ev, gender2.numpy(), pid2.numpy(),
                   ("linear", "kernel"))
    assert linear.leak["clip"].bal_acc < 0.6
    assert suite.leak["clip"].bal_acc > 0.7  # the audit stays honest


def test_full_rank_erasure_is_refused_and_names_the_rank():
    h, z, pid, _, _ = planted()
    wide = torch.cat([z, torch.randn(len(z), 8)], 1)  # 12-d proxy, 5-d h
    er = ConceptEraser(residual=False, rank=12)
    with pytest.raises(ErasureError, match="rank 12"):
        er.fit(h, wide, pid)
    assert not bool(er.fitted)  # and the module stays the identity
    assert torch.equal(er(h, wide), h)


def test_residual_removes_what_z_predicts_nonlinearly_and_is_cross_fitted():
    g = torch.Generator().manual_seed(5)
    pid = torch.arange(120).repeat_interleave(3)
    zp = torch.randn(120, 2, generator=g)
    z = zp[pid] + 0.05 * torch.randn(len(pid), 2, generator=g)
    own = torch.randn(120, 1, generator=g)[pid]  # what the face does not tell
    h = torch.cat([torch.sin(2 * z[:, :1]) + torch.cos(z[:, 1:]) ** 2, own], 1)
    er = ConceptEraser(residual=True, rank=0)
    out = er.fit(h, z, pid)
    assert er.stats["residual_r2"] > 0.2  # over both columns; the second is unpredictable
    # the face-driven column is mostly gone, the person's own column nearly untouched
    assert float(out[:, 0].var()) < 0.3 * float(h[:, 0].var())
    assert np.corrcoef(out[:, 1].numpy(), own[:, 0].numpy())[0, 1] > 0.95
    # cross-fitted: a training row's residual comes from a fit without its person, so it is
    # larger than the in-sample residual the full fit gives
    with torch.no_grad():
        in_sample = er(h, z)
    assert float((out[:, 0] ** 2).mean()) > float((in_sample[:, 0] ** 2).mean())
    with pytest.raises(ValueError, match="proxy z"):
        er(h)


def test_person_means_fit_zeroes_the_person_mean_covariance():
    h, z, pid, _, _ = planted(seed=6)
    er = ConceptEraser(residual=False, rank=4, fit_on="people")
    out = er.fit(h, z, pid).double()
    hm, zm = group_means(out, pid), group_means(z.double(), pid)
    cross = (hm - hm.mean(0)).T @ (zm - zm.mean(0)) / len(hm)
    assert cross.abs().max() < 1e-6  # float32 round-off; before: > 0.5


def test_task_subspace_at_full_rank_is_least_squares():
    h, _, _, _, label = planted(seed=7)
    h = h.double()
    y = label.double()
    basis = task_subspace(h, y, h.shape[1])
    assert torch.allclose(basis.T @ basis, torch.eye(h.shape[1], dtype=h.dtype), atol=1e-10)
    x = h - h.mean(0)

    def fit(a):
        a1 = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        return a1 @ torch.linalg.lstsq(a1, y[:, None]).solution

    assert torch.allclose(fit(x @ basis), fit(x), atol=1e-8)
    one = task_subspace(h, y, 1)[:, 0]
    cov = x.T @ (y - y.mean())
    assert torch.allclose(one.abs(), (cov / cov.norm()).abs(), atol=1e-10)


def test_erased_head_fits_the_label_and_round_trips_through_a_state_dict():
    h, z, pid, _, label = planted(seed=8)
    head = ErasedHead(h.shape[1], head_dims=2, residual=True, rank=1)
    head.fit(h, z, pid, label)
    with torch.no_grad():
        erased, rep, score = head(h, z)
    # the audit's `erased` has h's width, its `head` the head's directions
    assert erased.shape == h.shape and rep.shape == (len(h), 2)
    assert np.corrcoef(score.numpy(), label.numpy())[0, 1] > 0.8
    fresh = ErasedHead(h.shape[1], head_dims=2, residual=True, rank=1)
    assert not fresh.fitted
    fresh.load_state_dict(head.state_dict())  # fitted sizes (landmarks) come with the state
    assert fresh.fitted
    with torch.no_grad():
        assert torch.allclose(fresh(h, z)[2], score)


def test_the_erasure_stage_keeps_float32_under_bf16_autocast():
    """A bf16 projection would leave part of the erased direction in h and move the score."""
    h, z, pid, gender, label = planted(seed=3)
    head = ErasedHead(h.shape[1], head_dims=2, residual=False, rank=1)
    head.fit(h, z, pid, label)
    with torch.no_grad():
        want = head(h, z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = head(h, z)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32
        assert torch.allclose(a, b, atol=1e-6)


def test_collinear_erased_directions_do_not_derail_the_head():
    # all of a full-rank proxy's directions but one erased: the erased h is rank-deficient
    h, z, pid, _, label = planted(seed=9)
    head = ErasedHead(h.shape[1], head_dims=0, residual=False, rank=3)
    head.fit(h, torch.cat([z[:, :1], h[:, 3:]], 1), pid, label)
    with torch.no_grad():
        *_, score = head(h)
    assert torch.isfinite(score).all() and float(score.std()) > 1e-3
