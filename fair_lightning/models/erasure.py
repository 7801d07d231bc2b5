r"""Concept erasure after training: h -> h' that carries no (linear) trace of a proxy z.

Label-free with z = the face embedding (the proxy of gender and ethnicity the adversary
also uses); with z = one-hot attributes it is the label-using reference.

Two stages, each optional, fitted in closed form on the training split:

1. **Residual** (`residual=True`): :math:`r = h - g(z)` with :math:`g(z) \approx E[h \mid z]`
   a kernel ridge regression of h on z (RBF kernel, γ and the ridge chosen by grouped
   cross-validation of the regression itself: no label). It removes what of h any smooth
   function of the face predicts, nonlinear parts included, which a linear eraser leaves
   for kernel and MLP attackers (Ravfogel et al. 2022). The training rows get cross-fitted
   residuals (g fitted on other people), so what is fitted next sees residuals as unseen
   people will have them. Needs z at inference: the faces are there.
2. **LEACE** (Belrose et al. 2023), rank `rank`: the least-squares-smallest affine map
   after which no linear function of h' predicts z better than a constant:

   .. math::
       h' = h - W^{+} P_r W (h - \mu), \qquad W = \Sigma_{hh}^{-1/2},

   with :math:`P_r` the orthogonal projection onto the top-r left singular vectors of
   :math:`W \Sigma_{hz}`. At full rank :math:`\operatorname{Cov}(h', z) = 0`. Fitted on
   person means (`fit_on="people"`), the covariance of person means is zeroed instead,
   which is what a person-mean attacker reads (an affine map commutes with averaging).

`kept_variance` is the share of h's total variance left in h'. A fit that leaves h at
round-off (every direction of h erased) is refused: a standardising attacker would read the
rescaled round-off, and the head would have nothing to score.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ROUND_OFF = 1e-6  # kept variance below this share of h's: h' is numerically constant
GAMMA_SCALES = (0.25, 1.0, 4.0)  # RBF γ relative to 1 / dim(z) on standardised z
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1)  # kernel ridge strengths per row (the kernel diagonal is 1)


class ErasureError(ValueError):
    """An erasure that cannot be fitted as configured (e.g. it would erase all of h)."""


def person_folds(groups: torch.Tensor, n_folds: int, seed: int) -> list[torch.Tensor]:
    """Row masks of `n_folds` folds of whole people (seeded)."""
    people = torch.unique(groups)
    perm = people[torch.randperm(len(people), generator=torch.Generator().manual_seed(seed))]
    fold_of = {int(p): i % n_folds for i, p in enumerate(perm)}
    f = torch.tensor([fold_of[int(g)] for g in groups])
    return [f == k for k in range(min(n_folds, len(people)))]


def group_means(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean row of each group, in the order of `torch.unique(groups)`."""
    _, inv = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(int(inv.max()) + 1, x.shape[1], dtype=x.dtype).index_add_(0, inv, x)
    return sums / torch.bincount(inv).to(x.dtype)[:, None]


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp(min=0.0)


def _krr_fit(k_nm: torch.Tensor, k_mm: torch.Tensor, y: torch.Tensor,
             ridge: float) -> torch.Tensor:
    """Kernel ridge on m landmark rows (subset of regressors; m = n is exact kernel ridge):
    beta = (K_nm' K_nm + a n K_mm)^-1 K_nm' y."""
    n, m = k_nm.shape
    a = k_nm.T @ k_nm + ridge * n * k_mm
    a = a + 1e-10 * a.diagonal().mean() * torch.eye(m, dtype=a.dtype)
    return torch.linalg.solve(a, k_nm.T @ y)


class ConceptEraser(nn.Module):
    """The fitted eraser: `forward(h, z)` -> h'. Unfitted, it is the identity.

    Buffers hold everything (loaded from any checkpoint whatever their fitted sizes)."""

    def __init__(self, *, residual: bool = True, rank: int = 8, fit_on: str = "clips",
                 landmarks: int = 2000, folds: int = 5, seed: int = 0):
        super().__init__()
        if rank < 0:
            raise ErasureError(f"erasure rank must be >= 0, got {rank}")
        self.residual = residual
        self.rank = rank
        self.fit_on = fit_on
        self.landmarks = landmarks
        self.folds = folds
        self.seed = seed
        for name in ("h_mean", "z_mean", "z_scale", "points", "coef", "g_mean", "proj", "gamma"):
            self.register_buffer(name, torch.zeros(0))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.stats: dict[str, float] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # fitted sizes (landmarks, dims) are known only after fitting: take the saved ones
        for name, buf in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if saved is not None and buf is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty_like(saved, dtype=buf.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ inference
    def forward(self, h: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if not bool(self.fitted):
            return h
        out = h.to(self.proj.dtype)
        if self.residual:
            if z is None:
                raise ValueError("this eraser subtracts E[h|z]: it needs the proxy z")
            out = out - self._predict(z.to(self.proj.dtype))
        out = out - (out - self.h_mean) @ self.proj.T
        return out.to(h.dtype)

    def _kernel(self, z: torch.Tensor, points: torch.Tensor, gamma) -> torch.Tensor:
        zs = (z - self.z_mean) / self.z_scale
        return torch.exp(-gamma * _sq_dist(zs, points))

    def _predict(self, z: torch.Tensor) -> torch.Tensor:
        """g(z), the kernel ridge estimate of E[h | z]."""
        return self._kernel(z, self.points, self.gamma) @ self.coef + self.g_mean

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, h: torch.Tensor, z: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Fit on the training split's h [n, d], proxy z [n, dz] and person ids [n]; returns
        the training rows' erased h' (with cross-fitted residuals), for refitting the head."""
        h64, z64 = h.double().cpu(), z.double().cpu()
        groups = groups.cpu()
        r = self._fit_residual(h64, z64, groups) if self.residual else h64
        self._fit_leace(r, z64, groups)
        self.fitted.fill_(True)
        erased = r - (r - self.h_mean) @ self.proj.T
        total = float(torch.var(h64, 0).sum())
        kept = float(torch.var(erased, 0).sum()) / max(total, 1e-300)
        if not kept > ROUND_OFF:
            self.fitted.fill_(False)
            raise ErasureError(
                f"erasure leaves {kept:.1e} of h's variance (round-off): rank {self.rank} with "
                f"a {z.shape[1]}-d proxy erases every direction of the {h.shape[1]}-d h; "
                "use a smaller erasure.rank")
        self.stats["kept_variance"] = kept
        self.stats["rank"] = float(self.proj_rank)
        return erased.to(h.dtype)

    def _fit_residual(self, h, z, groups) -> torch.Tensor:
        """Choose γ and the ridge by grouped CV of h's prediction, fit g on every row, and
        return cross-fitted residuals h - g_oof(z)."""
        self.z_mean = z.mean(0)
        self.z_scale = z.std(0).clamp(min=1e-8)
        zs = (z - self.z_mean) / self.z_scale
        n = len(z)
        gen = torch.Generator().manual_seed(self.seed)
        pick = torch.sort(torch.randperm(n, generator=gen)[: min(self.landmarks, n)]).values
        folds = person_folds(groups, self.folds, self.seed)
        d2 = _sq_dist(zs, zs[pick])  # [n, landmarks]: all the kernel ever needs
        h_mean = h.mean(0)
        hc = h - h_mean
        best = (math.inf, None, None, None)
        for scale in GAMMA_SCALES:
            gamma = scale / z.shape[1]
            k = torch.exp(-gamma * d2)
            for ridge in RIDGES:
                oof = torch.empty_like(hc)
                for held in folds:
                    fit_rows = (~held).nonzero().squeeze(1)
                    cols = (~held[pick]).nonzero().squeeze(1)  # landmarks of fitting people
                    offset = hc[fit_rows].mean(0)
                    beta = _krr_fit(k[fit_rows][:, cols], k[pick[cols]][:, cols],
                                    hc[fit_rows] - offset, ridge)
                    oof[held] = k[held][:, cols] @ beta + offset
                err = float(((hc - oof) ** 2).mean())
                if err < best[0]:
                    best = (err, gamma, ridge, oof)
        err, gamma, ridge, oof = best
        self.gamma = torch.tensor(gamma, dtype=torch.float64)
        self.points = zs[pick]
        k = torch.exp(-gamma * d2)
        beta = _krr_fit(k, k[pick], hc, ridge)
        self.coef, self.g_mean = beta, h_mean
        self.stats.update({"residual_gamma": gamma, "residual_ridge": ridge,
                           "residual_r2": 1.0 - err / float((hc ** 2).mean())})
        return h - oof - h_mean

    def _fit_leace(self, h, z, groups) -> None:
        if self.fit_on == "people":
            h, z = group_means(h, groups), group_means(z, groups)
        mu = h.mean(0)
        hc, zc = h - mu, z - z.mean(0)
        n = len(h)
        s_hh = hc.T @ hc / n
        s_hz = hc.T @ zc / n
        evals, evecs = torch.linalg.eigh(s_hh)
        ok = evals > evals.max().clamp(min=1e-300) * 1e-10
        root = torch.where(ok, evals.clamp(min=0).sqrt(), torch.zeros_like(evals))
        inv_root = torch.where(ok, 1.0 / root.clamp(min=1e-300), torch.zeros_like(evals))
        w = evecs @ torch.diag(inv_root) @ evecs.T
        w_pinv = evecs @ torch.diag(root) @ evecs.T
        u, s, _ = torch.linalg.svd(w @ s_hz, full_matrices=False)
        keep = int((s > s.max().clamp(min=1e-300) * 1e-8).sum()) if len(s) else 0
        r = min(self.rank, keep)
        u = u[:, :r]
        self.proj_rank = r
        self.h_mean = mu
        self.proj = w_pinv @ u @ u.T @ w


def task_subspace(h: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """k orthonormal directions of h that predict the task label y (PLS1: each component
    the covariance direction of what the earlier ones left). A linear head on them reaches
    the least-squares fit as k grows (k = rank(h) is least squares itself), and what h
    holds outside them, the label does not need."""
    x = h - h.mean(0)
    yc = (y - y.mean()).to(x.dtype)
    dirs = []
    for _ in range(min(k, x.shape[1])):
        w = x.T @ yc
        if float(w.norm()) < 1e-12:
            break
        w = w / w.norm()
        t = x @ w
        x = x - torch.outer(t, x.T @ t / (t @ t))
        dirs.append(w)
    basis = torch.stack(dirs, 1) if dirs else torch.zeros(h.shape[1], 0, dtype=h.dtype)
    q, _ = torch.linalg.qr(basis)
    return q


class ErasedHead(nn.Module):
    """What the scorer's head reads after the erasure stage, and the refitted head.

    h -> `eraser` (face-proxy LEACE, optionally after the residual) -> the `head_dims`
    directions of the erased h that predict the task label (`task_subspace`; 0 keeps all of
    the erased h) -> a linear head with a sigmoid, refitted on the training split's label.
    The audit reads the erased h at full width (`erased`: removal from h is judged there)
    and, apart, the k-d `rep` the head reads (`head`: a bottleneck is an output-fairness
    device, not removal from h).
    """

    def __init__(self, h_dim: int, *, head_dims: int = 4, weight_decay: float = 1e-4,
                 **eraser):
        super().__init__()
        self.eraser = ConceptEraser(**eraser)
        self.head_dims = head_dims
        self.weight_decay = weight_decay
        dims = head_dims or h_dim
        self.register_buffer("basis", torch.zeros(h_dim, dims))
        self.register_buffer("rep_mean", torch.zeros(h_dim))
        self.head = nn.Linear(dims, 1)

    @property
    def fitted(self) -> bool:
        return bool(self.eraser.fitted)

    @property
    def needs_proxy(self) -> bool:
        """Whether inference reads the proxy z (the residual stage subtracts E[h | z])."""
        return self.eraser.residual

    @property
    def fits_proxy(self) -> bool:
        """Whether fitting reads z: LEACE (rank > 0) or the residual."""
        return self.eraser.residual or self.eraser.rank > 0

    def forward(self, h: torch.Tensor, z: torch.Tensor | None = None):
        """(erased h [B, h_dim], what the head reads [B, k], score [B]); in float32 at least,
        outside autocast: a bf16 projection would leave part of the erased directions."""
        with torch.autocast(h.device.type, enabled=False):
            h = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
            erased = self.eraser(h, z)
            rep = (erased - self.rep_mean.to(h.dtype)) @ self.basis.to(h.dtype)
            return erased, rep, torch.sigmoid(self.head(rep.to(self.head.weight.dtype))).squeeze(-1)

    @torch.no_grad()
    def fit(self, h: torch.Tensor, z: torch.Tensor, groups: torch.Tensor,
            label: torch.Tensor) -> dict[str, float]:
        erased = self.eraser.fit(h, z, groups).double()
        y = label.double().cpu()
        if self.head_dims:
            basis = task_subspace(erased, y, self.head_dims)
            if basis.shape[1] < self.head_dims:  # the label is constant or h is too narrow
                basis = torch.cat([basis, torch.zeros(len(basis), self.head_dims - basis.shape[1],
                                                      dtype=basis.dtype)], 1)
        else:
            basis = torch.eye(erased.shape[1], dtype=torch.float64)
        self.rep_mean.copy_(erased.mean(0))
        self.basis.copy_(basis)
        rep = (erased - erased.mean(0)) @ basis
        self._fit_head(rep, y)
        return dict(self.eraser.stats)

    def _fit_head(self, rep: torch.Tensor, y: torch.Tensor) -> None:
        """Mean squared error of sigmoid(w . rep + b) against the label, with the main
        optimizer's weight decay as a ridge; full batch, L-BFGS, from least squares."""
        x = torch.cat([rep, torch.ones(len(rep), 1, dtype=rep.dtype)], 1)
        # start: ridge least squares on the centred rep (erased directions are exactly
        # collinear; the ridge keeps them at zero), mapped through the sigmoid's slope at p
        n, k = rep.shape
        p = y.mean().clamp(0.05, 0.95)
        gram = rep.T @ rep + max(self.weight_decay, 1e-8) * n * torch.eye(k, dtype=rep.dtype)
        w = torch.linalg.solve(gram, rep.T @ (y - y.mean()))
        init = torch.cat([w / (p * (1 - p)), torch.logit(p)[None]])
        params = init.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-10, tolerance_change=1e-12)

        def objective(p):
            return ((torch.sigmoid(x @ p) - y) ** 2).mean() + self.weight_decay * (p[:-1] ** 2).sum()

        def loss():
            opt.zero_grad()
            value = objective(params)
            value.backward()
            return value

        with torch.enable_grad():
            opt.step(loss)
        # a line search that ran into the sigmoid's flat tails is no fit: keep the start
        if not float(objective(params.detach())) <= float(objective(init)):
            params = init
        w = params.detach()
        self.head.weight.copy_(w[:-1][None].to(self.head.weight.dtype))
        self.head.bias.copy_(w[-1:].to(self.head.bias.dtype))
