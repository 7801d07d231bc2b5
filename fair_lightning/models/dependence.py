"""Kernel dependence between two batches of vectors (HSIC, normalised as CKA).

Used by the `hsic` objective: the main network lowers the dependence between its
representation h and the face embeddings that the face discriminator's encoder learned
(label-free) to match with h. Unlike a learned critic, the measure has no state for the
main network to fool: with a characteristic (Gaussian) kernel it is zero only when h and f
are independent on the batch (Gretton et al. 2005; Kornblith et al. 2019 for the
normalised form).
"""

from __future__ import annotations

import torch


def _standardize(x: torch.Tensor) -> torch.Tensor:
    # per-feature z-score: the measure cannot be lowered by shrinking h's scale
    return (x - x.mean(0)) / x.std(0, unbiased=False).clamp(min=1e-8)


def gaussian_gram(x: torch.Tensor) -> torch.Tensor:
    """Gaussian kernel matrix of standardised rows, bandwidth by the median heuristic."""
    z = _standardize(x)
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp(min=0.0)
    n = x.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool, device=x.device)]
    bandwidth = off.detach().median().clamp(min=1e-8)  # a constant: no gradient through it
    return torch.exp(-d2 / bandwidth)


def unbiased_hsic(k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012); needs n >= 4. The plain (biased) one
    sits far above zero for independent batches of a few dozen rows, which would bury the
    signal the main network has to follow."""
    n = k.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=k.device)
    kt, gt = k * off, g * off
    return ((kt * gt.T).sum() + kt.sum() * gt.sum() / ((n - 1) * (n - 2))
            - 2.0 * (kt @ gt).sum() / (n - 2)) / (n * (n - 3))


def cka(k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Normalised HSIC of two kernel matrices: about 0 for independent rows, 1 at most."""
    norm = (unbiased_hsic(k, k) * unbiased_hsic(g, g)).clamp(min=1e-12).sqrt()
    return unbiased_hsic(k, g) / norm


def nocco(k: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Normalised cross-covariance dependence (Fukumizu et al. 2008), regularised by eps and
    centred on its permutation null.

    .. math::
        D = \operatorname{tr}(R_K R_G) - \frac{\operatorname{tr} R_K \operatorname{tr} R_G}{n - 1},
        \qquad R_K = \tilde K (\tilde K + n \epsilon I)^{-1}

    with :math:`\tilde K` the centred Gram matrix. :math:`R_K` is the hat matrix of kernel
    ridge regression on h, so D is about the sum of squared (regularised) kernel canonical
    correlations: every direction shared by h and the target counts in full, however little
    of h's variance it holds. CKA weighs directions by their variance, so a gender direction
    that holds 1-2% of h's variance but is perfectly readable barely moves it. The
    subtracted term is the exact mean of the first one over permutations of the rows, so D
    is about 0 when h and the target are independent, and lowering D cannot be done by
    shrinking h's effective rank alone."""
    n = k.shape[0]
    eye = torch.eye(n, device=k.device, dtype=k.dtype)
    center = eye - 1.0 / n
    rk, rg = (torch.linalg.solve(m + n * eps * eye, m)
              for m in (center @ k @ center, center @ g @ center))
    return (rk * rg.T).sum() - rk.trace() * rg.trace() / (n - 1)


def linear_gram(x: torch.Tensor) -> torch.Tensor:
    z = _standardize(x)
    return z @ z.T


GRAMS = {"gaussian": gaussian_gram, "linear": linear_gram}


def kernel_dependence(x: torch.Tensor, y: torch.Tensor, x_kernel: str = "gaussian",
                      measure: str = "cka", eps: float = 0.01) -> torch.Tensor:
    """Dependence between rows of x [N, dx] and y [N, dy] (Gaussian kernel on y; `x_kernel`
    on x); needs N >= 4. A linear kernel on x
    measures how far any linear read-out of x depends on y, which is what a linear probe
    exploits. `measure`: `cka` (normalised HSIC) or `nocco` (see :func:`nocco`).

    Computed in float32 whatever the trainer's precision: under bf16 autocast (about 3
    significant digits) the Gram matrices, the solves and the difference of two traces lose
    the small differences the scorer follows (11 % off for a weak dependence)."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 4:
        raise ValueError(f"need two batches of the same size >= 4, got {x.shape[0]} and {y.shape[0]}")
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        k, g = GRAMS[x_kernel](x), gaussian_gram(y)
        return cka(k, g) if measure == "cka" else nocco(k, g, eps)
