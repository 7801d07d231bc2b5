"""The kernel dependence measure behind the `hsic` objective."""

import pytest
import torch

from fair_lightning.models import kernel_dependence


def _gender_like(n, gen):
    g = torch.randint(0, 2, (n, 1), generator=gen).float()
    return g, torch.randn(n, 7, generator=gen)


def test_independent_batches_score_near_zero_and_dependent_ones_do_not():
    gen = torch.Generator().manual_seed(0)
    indep = torch.stack([kernel_dependence(torch.randn(32, 8, generator=gen),
                                           torch.randn(32, 4, generator=gen))
                         for _ in range(100)])
    assert abs(indep.mean()) < 0.02  # unbiased: no floor for small batches
    deps = []
    for _ in range(20):
        g, rest = _gender_like(32, gen)
        h = torch.cat([g + 0.3 * torch.randn(32, 1, generator=gen), rest], 1)
        face = g + 0.3 * torch.randn(32, 1, generator=gen)
        deps.append(kernel_dependence(h, face))
    # one attribute dimension among eight stands far above the independent spread
    assert torch.stack(deps).mean() > indep.mean() + 3 * indep.std()


def test_dependence_ignores_feature_scale():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 3, generator=gen)
    y = y + x[:, :3]
    scaled = x * torch.tensor([1e-4, 1e3, 1, 1, 1, 1, 1, 5.0])
    assert torch.allclose(kernel_dependence(x, y), kernel_dependence(scaled, y), atol=1e-4)


def test_gradient_descent_on_the_measure_removes_the_shared_signal():
    """What the main step does: move h against the measure while the face side is fixed."""
    gen = torch.Generator().manual_seed(2)
    g, rest = _gender_like(64, gen)
    face = g + 0.2 * torch.randn(64, 1, generator=gen)
    h = torch.cat([g + 0.2 * torch.randn(64, 1, generator=gen), rest], 1).requires_grad_()
    start = kernel_dependence(h, face).item()
    opt = torch.optim.Adam([h], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        kernel_dependence(h, face).backward()
        opt.step()
    hd = h.detach()
    # the attribute is no longer linearly readable from any h feature
    corr = torch.corrcoef(torch.cat([hd, g], 1).T)[-1, :-1].abs().max()
    assert start > 0.2 and kernel_dependence(hd, face) < 0.05 and corr < 0.3


def test_rejects_mismatched_or_tiny_batches():
    with pytest.raises(ValueError, match="same size"):
        kernel_dependence(torch.randn(8, 2), torch.randn(7, 2))
    with pytest.raises(ValueError, match=">= 4"):
        kernel_dependence(torch.randn(3, 2), torch.randn(3, 2))


def test_nocco_is_centred_under_independence():
    """Its permutation-null term is subtracted: independent batches average about 0, where
    the raw trace would sit near tr(R_K) tr(R_G) / (n - 1)."""
    gen = torch.Generator().manual_seed(3)
    vals = torch.stack([kernel_dependence(torch.randn(64, 8, generator=gen),
                                          torch.randn(64, 4, generator=gen), measure="nocco")
                        for _ in range(60)])
    assert abs(vals.mean()) < 2 * vals.std() / 60 ** 0.5 + 0.01


def test_nocco_sees_a_readable_direction_that_holds_little_variance():
    """Gender readable from the difference of two features of h that share a large common
    part, a direction with ~3% of h's variance: CKA weighs directions by variance and
    barely moves; nocco counts the direction in full, far above its spread when gender is
    not there."""
    gen = torch.Generator().manual_seed(4)
    n = 128

    def h_and_face(planted: bool):
        g = torch.randint(0, 2, (n, 1), generator=gen).float()
        common = torch.randn(n, 1, generator=gen)
        signal = g if planted else torch.randint(0, 2, (n, 1), generator=gen).float()
        h = torch.cat([common, common + 0.5 * (signal - 0.5)], 1)
        return h, g + 0.3 * torch.randn(n, 1, generator=gen)

    def both(h, face):
        return [float(kernel_dependence(h, face, x_kernel="linear", measure=m))
                for m in ("cka", "nocco")]

    cka, nocco = both(*h_and_face(True))
    null = torch.tensor([both(*h_and_face(False)) for _ in range(20)])
    assert cka < 0.1
    assert nocco > 0.5 and nocco > null[:, 1].mean() + 5 * null[:, 1].std()



@pytest.mark.parametrize("measure", ["nocco", "cka"])
def test_the_measure_keeps_float32_under_bf16_autocast(measure):
    """bf16 autocast casts matmul to bf16 on CPU as on CUDA: the term the scorer follows
    must not (before, nocco read 0.0138 against 0.0156 for a weak dependence)."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(256, 8, generator=g)
    h = torch.randn(256, 32, generator=g)
    h[:, 0] += 0.3 * f[:, 0]  # a weak dependence
    want = kernel_dependence(h, f, "gaussian", measure, 0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = kernel_dependence(h, f, "gaussian", measure, 0.01)
        # the inputs a bf16 network hands it (h from a bf16 layer) are widened, not rounded
        # again: the same rows in bf16 give what float32 gives on those rounded rows
        from_bf16 = kernel_dependence(h.bfloat16(), f, "gaussian", measure, 0.01)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(want)) < 1e-4
    ref = kernel_dependence(h.bfloat16().float(), f, "gaussian", measure, 0.01)
    assert abs(float(from_bf16) - float(ref)) < 1e-4
    # the gradient reaches h in its own dtype
    hb = h.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernel_dependence(hb, f, "gaussian", measure, 0.01).backward()
    assert hb.grad is not None and torch.isfinite(hb.grad).all()
