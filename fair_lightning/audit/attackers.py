"""Attacker families for the leakage audit, each tuned by grouped cross-validation.

An attacker is a classifier that tries to read a sensitive attribute from a frozen
representation. A family (linear, kernel ridge, MLP, SVM) has a grid of hyperparameters;
the audit scores every grid point by cross-validation on the fit split, with folds made of whole
people (a person's clips share a face and a voice, so a fold that splits a person would
reward recognising them), then refits the best point on the whole fit split.

Every family returns class *scores* ``[n, K]`` whose argmax is the prediction and whose
mean over a person's clips is that person's soft vote (one-vs-rest decision values for the
ridge models and the SVM, probabilities for the MLP).

Inputs are expected standardised (the audit fits the scaler on the fit split; it uses no
label). Everything is deterministic under ``seed`` and leaves the global RNGs untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
from sklearn.svm import SVC

Folds = list[tuple[np.ndarray, np.ndarray]]  # (train rows, held-out rows) per fold


@dataclass(frozen=True)
class Candidate:
    """One grid point of a family, and its cross-validated out-of-fold scores."""

    family: str
    params: dict[str, Any]
    oof: np.ndarray = field(repr=False)  # [n, K] scores, each row from the fold that held it out

    def describe(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def balanced_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-row weights n / (K_present * n_k) (sklearn's "balanced"), absent classes 0."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.zeros(num_classes)
    present = counts > 0
    w[present] = y.size / (present.sum() * counts[present])
    return w[y]


def _constant_scores(n: int, num_classes: int, cls: int) -> np.ndarray:
    out = np.zeros((n, num_classes))
    out[:, cls] = 1.0
    return out


Predictor = Any  # callable: [m, d] standardised rows -> [m, K] scores


class Family:
    """A classifier family with a hyperparameter grid. Subclasses implement `_fit` (one
    grid point on some rows, returning a predictor) and may override `cross_validate`
    where sharing work across grid points and folds is cheaper."""

    name = ""
    device = "cpu"  # where a family that computes in torch runs (the audit sets the run's)

    def grid(self, dim: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _fit(self, x, y, params, num_classes, seed) -> Predictor:
        raise NotImplementedError

    def fit(self, x, y, params, num_classes, seed=0) -> Predictor:
        present = np.unique(y)
        if present.size < 2:  # rows of one class: the only rule left is a constant
            return lambda z: _constant_scores(len(z), num_classes, int(present[0]))
        return self._fit(x, y, params, num_classes, seed)

    def cross_validate(self, x, y, folds: Folds, num_classes, seed=0) -> list[Candidate]:
        """Out-of-fold scores of every grid point."""
        grid = self.grid(x.shape[1])
        oof = [np.zeros((len(y), num_classes)) for _ in grid]
        for tr, va in folds:
            for o, p in zip(oof, grid, strict=True):
                o[va] = self.fit(x[tr], y[tr], p, num_classes, seed)(x[va])
        return [Candidate(self.name, p, o) for p, o in zip(grid, oof, strict=True)]


def _pm_targets(y: np.ndarray, num_classes: int) -> np.ndarray:
    """One-vs-rest targets: +1 for the row's class, -1 for the others, [n, K]."""
    return np.where(np.arange(num_classes)[None, :] == y[:, None], 1.0, -1.0)


class LinearFamily(Family):
    r"""Ridge classification (least squares on one-vs-rest ±1 targets), rows weighted so
    that every class weighs the same; the ridge α tuned. With an unpenalised intercept,

    .. math:: \beta = (X_c^\top W X_c + \alpha I)^{-1} X_c^\top W Y

    on weighted-centred X_c: a d × d solve, so the whole grid costs next to nothing. Scores
    are the decision values :math:`X\beta + b` per class."""

    name = "linear"
    alphas = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0)

    def grid(self, dim):
        return [{"alpha": a} for a in self.alphas]

    def cross_validate(self, x, y, folds, num_classes, seed=0):
        grid = self.grid(x.shape[1])
        oof = [np.zeros((len(y), num_classes)) for _ in grid]
        for tr, va in folds:
            for o, (beta, b) in zip(oof, self._solve(x[tr], y[tr], num_classes, self.alphas),
                                    strict=True):
                o[va] = x[va] @ beta + b
        return [Candidate(self.name, p, o) for p, o in zip(grid, oof, strict=True)]

    def _fit(self, x, y, params, num_classes, seed):
        beta, b = self._solve(x, y, num_classes, [params["alpha"]])[0]
        return lambda z: z @ beta + b

    @staticmethod
    def _solve(x, y, num_classes, alphas):
        w = balanced_weights(y, num_classes)
        t = _pm_targets(y, num_classes)
        mx, mt = w @ x / w.sum(), w @ t / w.sum()
        xc = x - mx
        gram, rhs = xc.T @ (w[:, None] * xc), xc.T @ (w[:, None] * (t - mt))
        eye = np.eye(x.shape[1])
        out = []
        for a in alphas:
            beta = np.linalg.solve(gram + a * eye, rhs)
            out.append((beta, mt - mx @ beta))
        return out


def sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # float64: small bandwidths with a small ridge make the kernel systems ill-conditioned
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


class _KernelFamily(Family):
    """An RBF-kernel family: γ relative to 1/d (scikit-learn's "scale" for standardised
    inputs). Cross-validation computes the distances of all rows once and each γ's kernel
    once; `_fold` fits every grid point of that γ on a fold's kernel blocks."""

    gamma_scale: tuple[float, ...] = ()

    def cross_validate(self, x, y, folds, num_classes, seed=0):
        d2 = sq_distances(x, x)
        grid = self.grid(x.shape[1])
        oof = [np.zeros((len(y), num_classes)) for _ in grid]
        for gamma in dict.fromkeys(p["gamma"] for p in grid):
            k_all = np.exp(-gamma * d2)
            points = [i for i, p in enumerate(grid) if p["gamma"] == gamma]
            for tr, va in folds:
                present = np.unique(y[tr])
                if present.size < 2:  # a fold of one class: the only rule is a constant
                    for i in points:
                        oof[i][va] = _constant_scores(len(va), num_classes, int(present[0]))
                    continue
                scores = self._fold(k_all[np.ix_(tr, tr)], k_all[np.ix_(va, tr)], y[tr],
                                    [grid[i] for i in points], num_classes)
                for i, sc in zip(points, scores, strict=True):
                    oof[i][va] = sc
        return [Candidate(self.name, p, o) for p, o in zip(grid, oof, strict=True)]

    def _fit(self, x, y, params, num_classes, seed):
        gamma = params["gamma"]
        predict = self._fit_kernel(np.exp(-gamma * sq_distances(x, x)), y, params, num_classes)
        return lambda z: predict(np.exp(-gamma * sq_distances(z, x)))

    def _fit_kernel(self, k, y, params, num_classes):
        """A predictor from the kernel between new rows and the fit rows to scores."""
        raise NotImplementedError

    def _fold(self, k_tr, k_va, y_tr, points, num_classes) -> list[np.ndarray]:
        return [self._fit_kernel(k_tr, y_tr, p, num_classes)(k_va) for p in points]


class _LargeKernelFamily(_KernelFamily):
    """A kernel family that, beyond `max_exact_rows` fit rows, fits in the feature space of a
    Nystroem approximation of its kernel (k(x, z) ~ k(x, L) k(L, L)^-1 k(L, z) through
    `landmarks` rows) instead of on the n x n kernel: every row still enters the fit, and
    the cost grows linearly in n (and as landmarks squared). This path computes in torch,
    float64, on the family's `device` (the run's GPU when it has one; autocast never
    touches float64). `_feature_fits` gives a (coefficients [m, K], intercept [K] or 0) pair
    of tensors per grid point of one γ."""

    max_exact_rows = 1000
    landmarks = 1000

    def _feature_fits(self, phi, y, num_classes, points, rows=None) -> list[tuple]:
        raise NotImplementedError

    def cross_validate(self, x, y, folds, num_classes, seed=0):
        if len(x) <= self.max_exact_rows:
            return super().cross_validate(x, y, folds, num_classes, seed)
        grid = self.grid(x.shape[1])
        oof = [np.zeros((len(y), num_classes)) for _ in grid]
        with torch.no_grad():
            nys = _Nystroem(x, self.landmarks, seed, self.device)
            for gamma in dict.fromkeys(p["gamma"] for p in grid):
                phi = nys.features(x, gamma)
                points = [i for i, p in enumerate(grid) if p["gamma"] == gamma]
                for tr, va in folds:
                    present = np.unique(y[tr])
                    if present.size < 2:
                        for i in points:
                            oof[i][va] = _constant_scores(len(va), num_classes, int(present[0]))
                        continue
                    betas = self._feature_fits(phi, y[tr], num_classes,
                                               [grid[i] for i in points],
                                               rows=_index(tr, phi.device))
                    phi_va = phi.index_select(0, _index(va, phi.device))
                    for i, (beta, b) in zip(points, betas, strict=True):
                        oof[i][va] = (phi_va @ beta + b).cpu().numpy()
                del phi  # before the next bandwidth's features are made
        return [Candidate(self.name, p, o) for p, o in zip(grid, oof, strict=True)]

    def _fit(self, x, y, params, num_classes, seed):
        if len(x) <= self.max_exact_rows:
            return super()._fit(x, y, params, num_classes, seed)
        gamma = params["gamma"]
        with torch.no_grad():
            nys = _Nystroem(x, self.landmarks, seed, self.device)
            beta, b = self._feature_fits(nys.features(x, gamma), y, num_classes, [params])[0]
        nys.keep_only(gamma)  # a fitted suite is kept: not its landmarks' distance matrix

        def predict(z):
            with torch.no_grad():
                return (nys.features(z, gamma) @ beta + b).cpu().numpy()
        return predict


def _index(rows: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(rows, dtype=torch.long, device=device)


class SVMFamily(_LargeKernelFamily):
    r"""RBF-kernel SVM, balanced class weights, C and γ tuned. Up to `max_exact_rows` fit
    rows: libsvm through scikit-learn's `SVC` on the precomputed kernel (hinge loss).
    Beyond: no n × n kernel; a linear SVM with the squared hinge on the Nystroem features
    phi of the same kernel, one-vs-rest,

    .. math:: \min_{\beta, b}\ \tfrac12 \lVert\beta\rVert^2
              + C \sum_i w_i \max(0,\ 1 - t_i (\phi_i^\top \beta + b))^2

    solved in the primal by Newton's method on the active set (Keerthi & DeCoste 2005), warm
    started along the C grid (see :func:`_l2svm`)."""

    name = "svm"
    Cs = (1.0, 10.0, 100.0, 1000.0)
    gamma_scale = (1 / 16, 1 / 4, 1.0, 4.0)
    # where the feature path gets cheaper (2 cores, d 32, 4 folds, the whole grid): exact
    # 1.8 / 6.9 / 27 / 118 s at 1,200 / 2,400 / 4,800 / 9,600 rows, features 8.1 / 12.5 /
    # 15 / 21 s, reading as much (the best point's accuracy within 0.02 either way)
    max_exact_rows = 3000

    def grid(self, dim):
        return [{"C": c, "gamma": g / dim} for g in self.gamma_scale for c in self.Cs]

    def _fit_kernel(self, k, y, params, num_classes):
        clf = SVC(kernel="precomputed", C=params["C"], class_weight="balanced", random_state=0,
                  decision_function_shape="ovr").fit(k, y)

        def predict(k_new):
            s = np.full((k_new.shape[0], num_classes), -1e9)  # classes absent from fit lose
            d = clf.decision_function(k_new)
            s[:, clf.classes_] = np.stack([-d, d], 1) if len(clf.classes_) == 2 else d
            return s
        return predict

    def _feature_fits(self, phi, y, num_classes, points, rows=None) -> list[tuple]:
        return [(c[:-1], c[-1]) for c in _l2svm(phi, y, num_classes, [p["C"] for p in points],
                                                rows=rows)]


class KernelRidgeFamily(_LargeKernelFamily):
    r"""Kernel ridge classification with an RBF kernel (a least-squares SVM): one-vs-rest
    ±1 targets, rows weighted so that every class weighs the same; γ and the ridge α tuned.
    Minimising :math:`\sum_i w_i \lVert y_i - f(x_i) \rVert^2 + \alpha \lVert f
    \rVert_\mathcal{H}^2` gives

    .. math:: f(x) = k(x, X)\, c, \qquad c = (K + \alpha W^{-1})^{-1} Y

    one Cholesky factorisation per grid point and fold (several times cheaper than fitting
    an SVM per point)."""

    name = "kernel"
    # measured on the benchmark's representations over γd in 1/256..4 and α in 1e-6..1:
    # every peak lies in this box, on a ridge where smaller bandwidths want less ridge
    alphas = (1e-5, 1e-4, 1e-3)
    gamma_scale = (1 / 64, 1 / 16, 1 / 4, 1.0)

    def grid(self, dim):
        return [{"alpha": a, "gamma": g / dim} for g in self.gamma_scale for a in self.alphas]

    # Exact kernel ridge costs O(n^3) time and O(n^2) memory in the fit rows: at 10x the
    # benchmark (9,600 training clips) a kernel is 0.7 GB and a factorisation takes
    # minutes; beyond `max_exact_rows` it fits in Nystroem feature space (see the base
    # class; the threshold equals the landmark count, so the cost is continuous there).
    # The default benchmark (960 training clips) stays exact.

    def _fit_kernel(self, k, y, params, num_classes):
        c = self._solve(k, y, num_classes, [params["alpha"]])[0]
        return lambda k_new: k_new @ c

    def _feature_fits(self, phi, y, num_classes, points, rows=None) -> list[tuple]:
        # no intercept: the ±1 targets' mean is absorbed by the RBF features
        return [(c, 0.0) for c in _feature_ridge(phi, y, num_classes,
                                                 [p["alpha"] for p in points], rows=rows)]

    def _fold(self, k_tr, k_va, y_tr, points, num_classes):
        # one target and weight set for every α of this γ
        return [k_va @ c for c in self._solve(k_tr, y_tr, num_classes,
                                               [p["alpha"] for p in points])]

    @staticmethod
    def _solve(k, y, num_classes, alphas) -> list[np.ndarray]:
        """Coefficients [n, K] for each alpha."""
        inv_w = 1.0 / balanced_weights(y, num_classes)
        t = _pm_targets(y, num_classes)
        out = []
        for a in alphas:
            m = k + np.diag(a * inv_w)
            try:
                out.append(scipy.linalg.cho_solve(scipy.linalg.cho_factor(m), t))
            except np.linalg.LinAlgError:  # numerically singular at a tiny alpha
                out.append(np.linalg.lstsq(m, t, rcond=None)[0])
        return out


ROW_BLOCK = 2048  # rows per block of the Nystroem features and their Gram matrix


def _f64(a, device) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64, device=device)


def _sq_distances_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d2.clamp_min_(0.0)


def _spd_solve(m: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """m^-1 rhs for a symmetric positive (semi)definite m: Cholesky, or the least-norm
    solution where m is numerically singular (a tiny ridge)."""
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.pinv(m, hermitian=True) @ rhs


class _Nystroem:
    """Feature maps phi with phi(x) . phi(z) ~ exp(-gamma |x - z|^2), through landmark rows
    drawn (seeded) from the fit rows; torch float64 tensors on `device`."""

    def __init__(self, x: np.ndarray, m: int, seed: int, device="cpu"):
        pick = np.sort(np.random.default_rng(seed).choice(len(x), size=min(m, len(x)),
                                                          replace=False))
        self.device = torch.device(device)
        self.points = _f64(np.asarray(x)[pick], self.device)
        self.d2_mm = _sq_distances_t(self.points, self.points)
        self._proj: dict[float, torch.Tensor] = {}

    def keep_only(self, gamma: float) -> None:
        """Drop what only new bandwidths need (the landmarks' m x m distances, other
        bandwidths' projections): a predictor keeps its own bandwidth's map alone."""
        self._proj = {gamma: self._proj[gamma]}
        self.d2_mm = None

    def features(self, x: np.ndarray, gamma: float) -> torch.Tensor:
        if gamma not in self._proj:
            s, u = torch.linalg.eigh(torch.exp(-gamma * self.d2_mm))
            keep = s > s.max() * 1e-10  # directions the landmarks cannot resolve are dropped
            self._proj[gamma] = u[:, keep] / torch.sqrt(s[keep])
        proj = self._proj[gamma]
        out = torch.empty((len(x), proj.shape[1]), dtype=torch.float64, device=self.device)
        for i in range(0, len(x), ROW_BLOCK):  # distance temporaries stay one block's size
            xb = _f64(x[i:i + ROW_BLOCK], self.device)
            out[i:i + ROW_BLOCK] = torch.exp(-gamma * _sq_distances_t(xb, self.points)) @ proj
        return out


def _feature_ridge(phi: torch.Tensor, y: np.ndarray, num_classes: int, alphas,
                   rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Kernel ridge's weighted objective in feature space: beta = (F'WF + a I)^-1 F'W T,
    one Cholesky factorisation per alpha (a few times cheaper than one eigendecomposition
    for the three alphas of the grid)."""
    dev = phi.device
    rows = torch.arange(len(phi), device=dev) if rows is None else rows  # `y` per row
    w = _f64(balanced_weights(y, num_classes), dev)
    t = _f64(_pm_targets(y, num_classes), dev)
    gram = torch.zeros((phi.shape[1], phi.shape[1]), dtype=torch.float64, device=dev)
    rhs = torch.zeros((phi.shape[1], num_classes), dtype=torch.float64, device=dev)
    for i in range(0, len(rows), ROW_BLOCK):  # no copy of the fold's phi, weighted or not
        pb, wb = phi.index_select(0, rows[i:i + ROW_BLOCK]), w[i:i + ROW_BLOCK, None]
        gram += pb.T @ (wb * pb)
        rhs += pb.T @ (wb * t[i:i + ROW_BLOCK])
    eye = torch.eye(len(gram), dtype=torch.float64, device=dev)
    return [_spd_solve(gram + a * eye, rhs) for a in alphas]


def _l2svm(phi: torch.Tensor, y: np.ndarray, num_classes: int, Cs,
           rows: torch.Tensor | None = None, max_iter: int = 50) -> list[torch.Tensor]:
    """One-vs-rest squared-hinge SVMs on features `phi[rows]` (labels `y` per row of
    `rows`), balanced row weights; for each C a [m + 1, K] matrix (the last row the
    intercept). Two classes: one machine, the other class's scores its negation.

    Newton's method on the active set A (rows with t f < 1): the objective restricted to A
    is a weighted least squares whose Hessian R + 2C F_A' W F_A is kept up to date by adding
    the rows that enter A and subtracting those that leave, so an iteration costs the rows
    that changed, not n; a backtracking line search makes every step descend. The C grid is
    solved in increasing order, each from the previous solution."""
    dev = phi.device
    rows = torch.arange(len(phi), device=dev) if rows is None else rows
    f = torch.empty((len(rows), phi.shape[1] + 1), dtype=torch.float64, device=dev)
    for i in range(0, len(rows), ROW_BLOCK):
        f[i:i + ROW_BLOCK, :-1] = phi.index_select(0, rows[i:i + ROW_BLOCK])
    f[:, -1] = 1.0
    w = _f64(balanced_weights(y, num_classes), dev)
    reg = torch.ones(f.shape[1], dtype=torch.float64, device=dev)
    reg[-1] = 1e-8  # the intercept is (all but) free
    full = _weighted_gram(f, w)
    classes = [1] if num_classes == 2 else range(num_classes)
    order = np.argsort(Cs)
    out: list[torch.Tensor | None] = [None] * len(Cs)
    betas = {k: torch.zeros(f.shape[1], dtype=torch.float64, device=dev) for k in classes}
    for j in order:
        c = float(Cs[j])
        coef = torch.zeros((f.shape[1], num_classes), dtype=torch.float64, device=dev)
        for k in classes:
            t = _f64(np.where(y == k, 1.0, -1.0), dev)
            betas[k] = _l2svm_newton(f, t, w, c, reg, full, betas[k], max_iter)
            coef[:, k] = betas[k]
        if num_classes == 2:
            coef[:, 0] = -coef[:, 1]
        out[j] = coef
    return out


def _weighted_gram(f: torch.Tensor, w: torch.Tensor,
                   pick: torch.Tensor | None = None) -> torch.Tensor:
    """F' W F over the rows `pick` (a boolean mask; all rows when None), in row blocks."""
    idx = (torch.arange(len(f), device=f.device) if pick is None
           else torch.nonzero(pick).squeeze(1))
    g = torch.zeros((f.shape[1], f.shape[1]), dtype=torch.float64, device=f.device)
    for i in range(0, len(idx), ROW_BLOCK):
        fb = f.index_select(0, idx[i:i + ROW_BLOCK])  # one copy (advanced indexing is slower)
        g += fb.T @ (w[idx[i:i + ROW_BLOCK], None] * fb)
    return g


def _l2svm_newton(f, t, w, c, reg, full, beta, max_iter) -> torch.Tensor:
    def objective(b) -> float:
        slack = (1.0 - t * (f @ b)).clamp_min(0.0)
        return float(0.5 * (reg * b * b).sum() + c * (w * slack * slack).sum())

    margin = t * (f @ beta)
    active = margin < 1.0
    # the active rows' Gram matrix: from the full one when most rows are active
    hess = (full - _weighted_gram(f, w, ~active) if float(active.double().mean()) > 0.5
            else _weighted_gram(f, w, active))
    obj = objective(beta)
    reg_diag = torch.diag(reg)
    for _ in range(max_iter):
        rhs = f.T @ (w * t * active)  # inactive rows weigh 0: no copy of the active rows
        target = _spd_solve(reg_diag + 2.0 * c * hess, (2.0 * c * rhs)[:, None])[:, 0]
        step, new = 1.0, target
        new_obj = objective(new)
        while new_obj > obj + 1e-12 * abs(obj) and step > 1e-4:
            step /= 2.0
            new = beta + step * (target - beta)
            new_obj = objective(new)
        if new_obj > obj + 1e-12 * abs(obj):  # no descent left: converged
            break
        new_active = t * (f @ new) < 1.0
        enter, leave = new_active & ~active, active & ~new_active
        beta, obj = new, new_obj
        entered, left = bool(enter.any()), bool(leave.any())
        if not entered and not left and step == 1.0:
            break  # the Newton point of an unchanged active set: the optimum
        if entered:
            hess = hess + _weighted_gram(f, w, enter)
        if left:
            hess = hess - _weighted_gram(f, w, leave)
        active = new_active
    return beta


class MLPFamily(Family):
    """Two hidden ReLU layers, class-weighted cross-entropy, full-batch Adam with decoupled
    weight decay; width, weight decay and the number of epochs tuned. All weight decays
    and folds of one width train at once as one batched network (one matrix product per
    layer for every model), and each is scored at several epochs on the way."""

    name = "mlp"
    # measured on the benchmark's h: width 256 never beat 64 in cross-validation, at 5x
    # the cost; the epoch count matters more than the width
    widths = (32, 64)
    weight_decays = (1e-3, 1e-1)
    epochs = (25, 50, 100, 200)
    lr = 3e-3

    def grid(self, dim):
        return [{"width": w, "weight_decay": wd, "epochs": e}
                for w in self.widths for wd in self.weight_decays for e in self.epochs]

    def cross_validate(self, x, y, folds, num_classes, seed=0):
        grid = self.grid(x.shape[1])
        oof = {self._key(p): np.zeros((len(y), num_classes)) for p in grid}
        for width in self.widths:
            jobs = [(wd, tr, va) for wd in self.weight_decays for tr, va in folds]
            snaps = self._train(x, y, [tr for _, tr, _ in jobs], [wd for wd, _, _ in jobs],
                                width, self.epochs, num_classes, seed)
            for epochs, params in snaps.items():
                scores = _mlp_scores(params, x)
                for i, (wd, _, va) in enumerate(jobs):
                    oof[(width, wd, epochs)][va] = scores[i, va]
        return [Candidate(self.name, p, oof[self._key(p)]) for p in grid]

    def _fit(self, x, y, params, num_classes, seed):
        snaps = self._train(x, y, [np.arange(len(y))], [params["weight_decay"]],
                            params["width"], (params["epochs"],), num_classes, seed)
        weights = snaps[params["epochs"]]
        return lambda z: _mlp_scores(weights, z)[0]

    @staticmethod
    def _key(p):
        return (p["width"], p["weight_decay"], p["epochs"])

    def _train(self, x, y, train_rows, weight_decays, width, checkpoints, num_classes, seed):
        """Train M = len(train_rows) networks at once, each on its own rows; their weights
        at every checkpoint epoch. Each network sees only its rows (gathered, padded to the
        longest with rows of weight 0), so a 4-fold batch costs 3/4 of the full split."""
        m, d = len(train_rows), x.shape[1]
        longest = max(len(r) for r in train_rows)
        idx = np.zeros((m, longest), dtype=np.int64)
        w = np.zeros((m, longest))
        for i, rows in enumerate(train_rows):
            idx[i, :len(rows)] = rows
            w[i, :len(rows)] = balanced_weights(y[rows], num_classes) / len(rows)
        dev = self.device
        xt = torch.as_tensor(x, dtype=torch.float32, device=dev)[torch.as_tensor(idx, device=dev)]
        yt = torch.as_tensor(y, dtype=torch.long, device=dev)[torch.as_tensor(idx, device=dev)][..., None]
        wt = torch.as_tensor(w, dtype=torch.float32, device=dev)
        decay = torch.as_tensor(weight_decays, dtype=torch.float32, device=dev).view(m, 1, 1)
        gen = torch.Generator().manual_seed(seed)

        def layer(fan_in, fan_out):  # nn.Linear's default initialisation, per model
            bound = 1.0 / math.sqrt(fan_in)  # drawn on the CPU: the same start on any device
            weight = (torch.rand(m, fan_in, fan_out, generator=gen) * 2 - 1) * bound
            bias = (torch.rand(m, 1, fan_out, generator=gen) * 2 - 1) * bound
            return weight.to(dev).requires_grad_(), bias.to(dev).requires_grad_()

        params = [*layer(d, width), *layer(width, width), *layer(width, num_classes)]
        opt = torch.optim.Adam(params, lr=self.lr)
        snaps = {}
        # callers may sit under Lightning's inference mode (test) or a bf16 autocast; these
        # models need autograd, and float32 whatever the run's precision
        with (torch.inference_mode(False), torch.enable_grad(),
              torch.autocast(torch.device(dev).type, enabled=False)):
            for epoch in range(1, max(checkpoints) + 1):
                opt.zero_grad(set_to_none=True)
                logp = torch.log_softmax(_mlp_forward(params, xt), -1)
                (-(logp.gather(-1, yt).squeeze(-1)) * wt).sum().backward()  # models independent
                opt.step()
                with torch.no_grad():
                    for weight in params[0::2]:  # decoupled weight decay, a rate per model
                        weight.mul_(1 - self.lr * decay)
                if epoch in checkpoints:
                    snaps[epoch] = [p.detach().clone() for p in params]
        return snaps


def _mlp_forward(params, x):
    h = torch.relu(torch.baddbmm(params[1], x, params[0]))
    h = torch.relu(torch.baddbmm(params[3], h, params[2]))
    return torch.baddbmm(params[5], h, params[4])


def _mlp_scores(params, x: np.ndarray) -> np.ndarray:
    """Softmax scores [M, n, K] of M batched networks on rows x (on the weights' device)."""
    m = params[0].shape[0]
    xt = torch.as_tensor(x, dtype=torch.float32, device=params[0].device).expand(m, *x.shape)
    with torch.no_grad(), torch.autocast(params[0].device.type, enabled=False):
        return torch.softmax(_mlp_forward(params, xt), -1).double().cpu().numpy()


FAMILIES: dict[str, type[Family]] = {
    f.name: f for f in (LinearFamily, KernelRidgeFamily, MLPFamily, SVMFamily)}
