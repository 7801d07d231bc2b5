"""The face proxy reduced to what varies most across people (label-free).

A face-recognition descriptor tells people apart: it holds who a person is, and gender
and ethnicity among it. Made the target of the adversary or of the erasure stage in full,
it removes identity from h, and with identity the candidate's merit, which is a person's
too. What varies most *between people* in such a descriptor is their broad look (gender
first, then skin tone and age on varied data), while what singles one person out is spread
over many small directions. `ProxyComponents` keeps the k leading principal directions of
the training split's person means: no sensitive label is read; the audit's `proxy` layer
says what the kept directions carry and how well they still identify people.

On a varied population the face's leading directions mix gender with skin tone, age and
the photograph; what the face shares with the voice is narrower: gender (and age, perhaps
an accent), not the answers a candidate gives, which live in one channel at a time. With
`kind="cross_modal"` the k directions are the face side's leading canonical directions
between the person means of the face embedding and of the voice's clip statistics (CCA
after each side is reduced to its `CCA_PRINCIPAL` leading principal directions, the
regularisation a few hundred people need); `"both"` keeps the k leading directions and the
k canonical ones. Only the face side is kept: the proxy is still read from the face.

The face's partner is the voice by default; `partners=("text",)` takes the words instead
(the mean of a clip's sentence embeddings: what people say about themselves), and
`("voice", "text")` both, each reduced to its own `CCA_PRINCIPAL` whitened principal
directions before they are joined, so neither channel's size or scale decides.
"""

from __future__ import annotations

import torch
from torch import nn

PROXY_KINDS = ("leading", "cross_modal", "both")
PARTNERS = ("voice", "text")  # the channels a cross-modal proxy shares the face with
CCA_PRINCIPAL = 10  # principal directions kept on each side before CCA


def proxy_width(k: int, kind: str) -> int:
    """How many numbers a proxy of k directions per kind gives."""
    return 2 * k if kind == "both" else k


def voice_statistics(audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A clip's voice as the mean and spread of its audio features over its real frames:
    [B, T, F] and a [B, T] mask -> [B, 2F]."""
    m = mask[..., None].to(audio.dtype)
    n = m.sum(1).clamp_min(1.0)
    mean = (audio * m).sum(1) / n
    var = (((audio - mean[:, None]) ** 2) * m).sum(1) / n
    return torch.cat([mean, var.sqrt()], 1)


def text_statistics(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A clip's words as the mean of its real sentences' embeddings: [B, S, E] -> [B, E]."""
    m = mask[..., None].to(text.dtype)
    return (text * m).sum(1) / m.sum(1).clamp_min(1.0)


def partner_statistics(batch, partners) -> dict[str, torch.Tensor]:
    """Each partner channel's clip statistics of a batch, float32 on the CPU."""
    stats = {"voice": lambda: voice_statistics(batch.audio, batch.audio_mask),
             "text": lambda: text_statistics(batch.text, batch.text_mask)}
    return {name: stats[name]().float().cpu() for name in partners}


def whitened_scores(x: torch.Tensor, principal: int = CCA_PRINCIPAL) -> torch.Tensor:
    """Rows [P, d] -> their scores on the `principal` leading principal directions, each of
    unit variance (a channel's own scale and size then weigh nothing when joined)."""
    xc = x - x.mean(0)
    u, sv, _ = torch.linalg.svd(xc, full_matrices=False)
    r = int(min(principal, len(x) - 1, (sv > sv[0] * 1e-9).sum()))
    return u[:, :r] * (len(x) - 1) ** 0.5


def person_means(x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """[N, d] rows -> [P, d] means per person (each person once, whatever their clips),
    people in the order of `torch.unique`."""
    people, index = torch.unique(identity, return_inverse=True)
    sums = torch.zeros(len(people), x.shape[1], dtype=x.dtype).index_add_(0, index, x)
    return sums / torch.bincount(index, minlength=len(people))[:, None].to(x.dtype)


def canonical_directions(a: torch.Tensor, b: torch.Tensor, k: int,
                         principal: int = CCA_PRINCIPAL, principal_b: int | None = None,
                         b_name: str = "voice") -> tuple[torch.Tensor, torch.Tensor]:
    """The a side's k leading canonical directions between rows of a [P, da] and b [P, db]
    (both centred here), each side first reduced to its leading principal directions
    (`principal`; b's `principal_b`, the same by default): W [da, k] with (a - mean) @ W of
    unit variance, and the canonical correlations [k]."""
    n = a.shape[0]
    ac, bc = a - a.mean(0), b - b.mean(0)
    ua, sa, vta = torch.linalg.svd(ac, full_matrices=False)
    ub, sb, _ = torch.linalg.svd(bc, full_matrices=False)
    ra = int(min(principal, n - 1, (sa > sa[0] * 1e-9).sum()))
    rb = int(min(principal_b or principal, n - 1, (sb > sb[0] * 1e-9).sum()))
    if k > min(ra, rb):
        raise ValueError(f"proxy components: k={k} canonical directions need at least {k} "
                         f"principal directions on each side (face {ra}, {b_name} {rb})")
    # whitened scores are u * sqrt(n - 1): their cross-covariance is ua' ub
    left, corr, _ = torch.linalg.svd(ua[:, :ra].T @ ub[:, :rb])
    w = vta[:ra].T @ torch.diag((n - 1) ** 0.5 / sa[:ra]) @ left[:, :k]
    return w, corr[:k]


def _signed(basis: torch.Tensor) -> torch.Tensor:
    """A deterministic sign: the largest coordinate of each direction is positive."""
    return basis * torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))


class ProxyComponents(nn.Module):
    """Embedding [N, d] -> its coordinates on k directions across people, each scaled to unit
    spread across people: the k leading principal directions of the person means
    (`kind="leading"`), the face side's k leading canonical directions with the voice
    (`"cross_modal"`), or both (2k). Fitted once (`fit`); its buffers travel in the
    checkpoint."""

    def __init__(self, dim: int, k: int, kind: str = "leading",
                 partners: tuple[str, ...] = ("voice",)):
        super().__init__()
        if not 1 <= k <= dim:
            raise ValueError(f"proxy components: k={k} must be in 1..{dim} (the embedding's size)")
        if kind not in PROXY_KINDS:
            raise ValueError(f"proxy components: kind must be one of {PROXY_KINDS}, got {kind!r}")
        partners = tuple(partners)
        if not partners or len(set(partners)) < len(partners) or set(partners) - set(PARTNERS):
            raise ValueError(f"proxy components: partners must be distinct names of {PARTNERS}, "
                             f"got {partners!r}")
        self.k, self.kind = k, kind
        self.partners = partners if kind != "leading" else ()
        self.out_dim = proxy_width(k, kind)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(self.out_dim, dim))
        self.register_buffer("scale", torch.ones(self.out_dim))
        # leading: the share of between-person variance; cross-modal: the canonical correlation
        self.register_buffer("explained", torch.zeros(self.out_dim))
        self.register_buffer("is_fitted", torch.tensor(False))

    @property
    def needs_partners(self) -> bool:
        return self.kind != "leading"

    def variance_shares(self) -> list[float]:
        """The between-person variance each leading direction holds (none if not kept)."""
        return self.explained.tolist()[:self.k] if self.kind != "cross_modal" else []

    def canonical_correlations(self) -> list[float]:
        """Each partner-shared direction's canonical correlation (none if not kept)."""
        return self.explained.tolist()[-self.k:] if self.needs_partners else []

    def summary(self) -> dict[str, float]:
        """`proxy/components_variance_share` (leading directions) and
        `proxy/canonical_correlation_<i>` (partner-shared ones), from the fitted buffers."""
        out = {}
        if shares := self.variance_shares():
            out["proxy/components_variance_share"] = sum(shares)
        out.update({f"proxy/canonical_correlation_{i + 1}": c
                    for i, c in enumerate(self.canonical_correlations())})
        return out

    @property
    def fitted(self) -> bool:
        return bool(self.is_fitted)

    @torch.no_grad()
    def fit(self, embedding: torch.Tensor, identity: torch.Tensor,
            partners: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Fit on the per-person means (each person counts once, whatever their clip
        count) of the embedding and, for the cross-modal directions, of each partner's clip
        statistics (`partner_statistics`; rows as the embedding's). Returns the share of
        between-person variance the leading directions hold and the canonical
        correlations."""
        means = person_means(embedding.double(), identity)
        if len(means) <= self.k:
            raise ValueError(f"proxy components: {len(means)} people in the training split, "
                             f"need more than k={self.k}")
        missing = [p for p in self.partners if p not in (partners or {})]
        if missing:
            raise ValueError(f"proxy components: kind={self.kind} needs the clips' "
                             f"{' and '.join(missing)}")
        center = means.mean(0)
        bases, scales, explained = [], [], []
        if self.kind in ("leading", "both"):
            _, s, vt = torch.linalg.svd(means - center, full_matrices=False)
            if not float(s[self.k - 1]) > 1e-12 * float(s[0]):  # also when s is all zero
                raise ValueError("proxy components: the person means do not vary along "
                                 f"{self.k} directions (the embedding is near-constant)")
            share = (s[: self.k] ** 2) / (s ** 2).sum()
            bases.append(_signed(vt[: self.k]))
            scales.append(s[: self.k] / (len(means) - 1) ** 0.5)
            explained.append(share)
        if self.needs_partners:
            sides = [person_means(partners[p].double(), identity) for p in self.partners]
            other = sides[0] if len(sides) == 1 else torch.cat([whitened_scores(x)
                                                                 for x in sides], 1)
            w, corr = canonical_directions(means, other, self.k,
                                           principal_b=CCA_PRINCIPAL * len(sides),
                                           b_name=" and ".join(self.partners))
            bases.append(_signed(w.T))  # a sign flip keeps unit variance
            scales.append(torch.ones(self.k, dtype=w.dtype))
            explained.append(corr)
        self.mean.copy_(center.to(self.mean))
        self.basis.copy_(torch.cat(bases).to(self.basis))
        self.scale.copy_(torch.cat(scales).to(self.scale))
        self.explained.copy_(torch.cat(explained).to(self.explained))
        self.is_fitted.fill_(True)
        return self.summary()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("proxy components used before `fit`")
        return ((x.float() - self.mean) @ self.basis.T) / self.scale
