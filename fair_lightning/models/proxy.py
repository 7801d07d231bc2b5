"""The face proxy reduced to what varies most across people (label-free).

A face-recognition descriptor tells people apart: it holds who a person is, and gender
and ethnicity among it. Made the target of the adversary or of the erasure stage in full,
it removes identity from h, and with identity the candidate's merit, which is a person's
too. What varies most *between people* in such a descriptor is their broad look (gender
first, then skin tone and age on varied data), while what singles one person out is spread
over many small directions. `ProxyComponents` keeps the k leading principal directions of
the training split's person means: no sensitive label is read; the audit's `proxy` layer
says what the kept directions carry and how well they still identify people.
"""

from __future__ import annotations

import torch
from torch import nn


class ProxyComponents(nn.Module):
    """Embedding [N, d] -> its coordinates on the k leading principal directions of the
    person means, each scaled to unit spread across people. Fitted once (`fit`); its
    buffers travel in the checkpoint."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        if not 1 <= k <= dim:
            raise ValueError(f"proxy components: k={k} must be in 1..{dim} (the embedding's size)")
        self.k = k
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(k, dim))
        self.register_buffer("scale", torch.ones(k))
        self.register_buffer("explained", torch.zeros(k))
        self.register_buffer("is_fitted", torch.tensor(False))

    @property
    def fitted(self) -> bool:
        return bool(self.is_fitted)

    @torch.no_grad()
    def fit(self, embedding: torch.Tensor, identity: torch.Tensor) -> dict[str, float]:
        """Principal directions of the per-person mean embeddings (each person counts
        once, whatever their clip count). Returns the share of between-person variance
        the kept directions hold."""
        x = embedding.double()
        people, index = torch.unique(identity, return_inverse=True)
        if len(people) <= self.k:
            raise ValueError(f"proxy components: {len(people)} people in the training split, "
                             f"need more than k={self.k}")
        sums = torch.zeros(len(people), x.shape[1], dtype=x.dtype).index_add_(0, index, x)
        means = sums / torch.bincount(index, minlength=len(people))[:, None]
        center = means.mean(0)
        _, s, vt = torch.linalg.svd(means - center, full_matrices=False)
        basis = vt[: self.k]
        # a deterministic sign: the largest coordinate of each direction is positive
        sign = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
        basis = basis * sign
        if not float(s[self.k - 1]) > 1e-12 * float(s[0]):  # also when s is all zero
            raise ValueError("proxy components: the person means do not vary along "
                             f"{self.k} directions (the embedding is near-constant)")
        share = (s[: self.k] ** 2) / (s ** 2).sum()
        self.mean.copy_(center.to(self.mean))
        self.basis.copy_(basis.to(self.basis))
        self.scale.copy_((s[: self.k] / (len(people) - 1) ** 0.5).to(self.scale))
        self.explained.copy_(share.to(self.explained))
        self.is_fitted.fill_(True)
        return {"proxy/components_variance_share": float(share.sum())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("proxy components used before `fit`")
        return ((x.float() - self.mean) @ self.basis.T) / self.scale
