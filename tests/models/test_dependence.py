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
