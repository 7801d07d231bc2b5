"""Post-hoc sensitive-attribute probes on frozen representations.

A fooled adversary is not evidence that a representation is clean: Elazar & Goldberg
(2018) showed that an adversary trained alongside the encoder can sit at chance while a
*fresh* classifier, trained afterwards on the frozen representation, still recovers the
attribute. The audit therefore trains new probes (a linear one and a small MLP) on a fit
set and scores them on an eval set whose identities are disjoint from it, and reports the
balanced accuracy with an identity-cluster bootstrap interval next to the chance level.

Functional pieces (:func:`balanced_accuracy`,
:func:`cluster_bootstrap_balanced_accuracy`) are usable on their own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import StandardScaler
from torch import nn

__all__ = [
    "ProbeResult",
    "balanced_accuracy",
    "cluster_bootstrap_balanced_accuracy",
    "probe_attribute",
]

UNKNOWN = -1
_MLP_LR = 1e-2
_MLP_WEIGHT_DECAY = 1e-4
_MLP_DROPOUT = 0.1
_MLP_BATCH_SIZE = 1024  # full batch for audit-sized sets; minibatches beyond
_MLP_VAL_FRACTION = 0.2


@dataclass
class ProbeResult:
    """What one probe recovers from one representation about one attribute.

    Attributes:
        bal_acc: balanced accuracy on the eval set (see :func:`balanced_accuracy`).
        bal_acc_ci_low, bal_acc_ci_high: 95% identity-cluster bootstrap percentile interval.
        macro_f1: unweighted mean of per-class F1 over classes in ``y_true`` or ``y_pred``.
        roc_auc: binary: AUC of P(class 1); multi-class: one-vs-rest macro AUC over the
            classes present in eval. NaN if eval holds a single class.
        chance: ``1 / num_classes``, the balanced accuracy of any attribute-blind rule.
        majority_rate: share of the largest class in eval (plain accuracy of a constant guess).
        n_fit, n_eval: clips used after dropping unknown attributes.
        n_unknown: clips dropped because the attribute is ``-1`` (fit + eval).
    """

    bal_acc: float
    bal_acc_ci_low: float
    bal_acc_ci_high: float
    macro_f1: float
    roc_auc: float
    chance: float
    majority_rate: float
    n_fit: int
    n_eval: int
    n_unknown: int

    def as_dict(self) -> dict[str, float]:
        """All fields as floats, ready for a logger."""
        return {k: float(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- functional
def _per_class_counts(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    support = np.bincount(y_true, minlength=num_classes)
    correct = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    return support, correct


def _bal_acc_from_counts(support: np.ndarray, correct: np.ndarray) -> np.ndarray:
    # Mean recall over classes with support; works on [K] or batched [B, K] counts.
    present = support > 0
    recall = np.divide(correct, support, out=np.zeros(support.shape), where=present)
    return recall.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def balanced_accuracy(y_true: Any, y_pred: Any, num_classes: int) -> float:
    r"""Balanced accuracy: the mean per-class recall over the classes present in ``y_true``.

    .. math::
        \text{BA} = \frac{1}{|\mathcal{K}|} \sum_{k \in \mathcal{K}}
        \frac{\#\{i : y_i = k,\ \hat y_i = k\}}{\#\{i : y_i = k\}},
        \qquad \mathcal{K} = \{k : \exists i,\ y_i = k\}

    Every class weighs the same whatever its size, so a constant guess scores
    ``1 / |K|`` and a skewed attribute (e.g. 80% one ethnicity) cannot look leaky by
    predicting the majority. Matches ``sklearn.metrics.balanced_accuracy_score``.

    Args:
        y_true: integer labels in ``[0, num_classes)``, shape ``[n]``.
        y_pred: integer predictions in ``[0, num_classes)``, shape ``[n]``.
        num_classes: number of attribute classes.
    """
    y_true = _as_int(y_true, "y_true", num_classes)
    y_pred = _as_int(y_pred, "y_pred", num_classes)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty and of the same shape, "
            f"got {y_true.shape} and {y_pred.shape}"
        )
    return float(_bal_acc_from_counts(*_per_class_counts(y_true, y_pred, num_classes)))


def cluster_bootstrap_balanced_accuracy(
    y_true: Any,
    y_pred: Any,
    groups: Any,
    num_classes: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    r"""Percentile interval for balanced accuracy, resampling identities (clusters).

    The clips of one person are not independent draws: they share a face, a voice and
    an attribute, so a probe that is right on one clip tends to be right on all of
    them. Resampling clips would treat 8 clips of one person as 8 pieces of evidence
    and give an interval far too narrow. Instead each resample draws the ``G`` eval
    identities with replacement and keeps *all* clips of every drawn identity:

    .. math::
        \text{BA}^{*b} = \text{BA}\Big(\textstyle\bigcup_{j=1}^{G} \text{clips}(g^{*b}_j)\Big),
        \quad g^{*b}_j \sim \text{Uniform}\{1..G\},\quad b = 1..B

    and the interval is the ``(1-level)/2`` and ``(1+level)/2`` percentiles of
    :math:`\{\text{BA}^{*b}\}`. Balanced accuracy only needs per-class support and hit
    counts, so per-identity counts are computed once and each resample is a weighted
    sum (one matrix product for all ``B`` resamples).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``n_resamples == 0``.
    """
    y_true = _as_int(y_true, "y_true", num_classes)
    y_pred = _as_int(y_pred, "y_pred", num_classes)
    _, gid = np.unique(_as_groups(groups), return_inverse=True)
    if not (y_true.shape == y_pred.shape == gid.shape) or y_true.size == 0:
        raise ValueError("y_true, y_pred and groups must be non-empty and of the same length")
    if n_resamples <= 0:
        return math.nan, math.nan
    n_groups = int(gid.max()) + 1
    # Per-identity support and hits, [G, K].
    support = np.bincount(gid * num_classes + y_true, minlength=n_groups * num_classes)
    hit = (y_true == y_pred).astype(np.int64)
    correct = np.bincount(gid * num_classes + y_true, weights=hit, minlength=n_groups * num_classes)
    support = support.reshape(n_groups, num_classes).astype(np.float64)
    correct = correct.reshape(n_groups, num_classes)
    # Multiplicity of each identity in each resample, [B, G].
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    offsets = (np.arange(n_resamples) * n_groups)[:, None]
    mult = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_groups)
    mult = mult.reshape(n_resamples, n_groups).astype(np.float64)
    boot = _bal_acc_from_counts(mult @ support, mult @ correct)
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


# --------------------------------------------------------------------------- probes
def probe_attribute(
    fit_x: Any,
    fit_y: Any,
    fit_groups: Any,
    eval_x: Any,
    eval_y: Any,
    eval_groups: Any,
    num_classes: int,
    *,
    seed: int = 0,
    bootstrap: int = 1000,
    mlp_hidden: int = 64,
    mlp_max_epochs: int = 200,
    mlp_patience: int = 20,
) -> dict[str, ProbeResult]:
    """Train fresh linear and MLP probes for one attribute and score them on held-out identities.

    Clips whose attribute is ``-1`` (unknown) are left out and counted. Both probes see
    standardised inputs (statistics from the fit set only) and balanced class weights,
    so a probe cannot win by predicting the majority class.

    * ``"linear"``: ``StandardScaler`` + ``LogisticRegression(class_weight="balanced")``.
    * ``"mlp"``: one hidden ReLU layer with dropout, class-weighted cross-entropy, Adam,
      early-stopped on the weighted loss of a probe-validation split made of
      ~20% of the *fit* identities (identity-disjoint from the rest of fit); the best
      state is restored. Training runs under a forked torch RNG seeded by ``seed``, so
      it is deterministic and leaves the global RNG untouched.

    Both probes share the bootstrap seed, so their intervals use the same resampled
    identities and can be compared pairwise.

    Args:
        fit_x, eval_x: representations, ``[n, d]`` (numpy or CPU/GPU tensors).
        fit_y, eval_y: attribute classes in ``[0, num_classes)`` or ``-1`` for unknown.
        fit_groups, eval_groups: identity of each clip (strings or integers).
        num_classes: number of attribute classes (2 for gender, 3 for ethnicity).
        seed: seeds the MLP, its validation split and the bootstrap.
        bootstrap: number of identity-cluster bootstrap resamples (0: no interval).
        mlp_hidden, mlp_max_epochs, mlp_patience: MLP width and early-stopping budget.

    Returns:
        ``{"linear": ProbeResult, "mlp": ProbeResult}``.

    Raises:
        ValueError: fit and eval share an identity, fewer than two classes remain in fit,
            no eval clip remains, or shapes/labels are inconsistent.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    fx, fy, fg = _check_split("fit", fit_x, fit_y, fit_groups, num_classes)
    ex, ey, eg = _check_split("eval", eval_x, eval_y, eval_groups, num_classes)
    if fx.shape[1] != ex.shape[1]:
        raise ValueError(f"fit_x has {fx.shape[1]} features but eval_x has {ex.shape[1]}")
    shared = set(fg.tolist()) & set(eg.tolist())
    if shared:
        sample = sorted(map(str, shared))[:5]
        raise ValueError(
            f"fit and eval share {len(shared)} identities (e.g. {sample}); probes must be "
            "scored on identity-disjoint data, otherwise they can recognise the person "
            "instead of the attribute"
        )

    known_f, known_e = fy != UNKNOWN, ey != UNKNOWN
    n_unknown = int((~known_f).sum() + (~known_e).sum())
    fx, fy, fg = fx[known_f], fy[known_f], fg[known_f]
    ex, ey, eg = ex[known_e], ey[known_e], eg[known_e]
    if np.unique(fy).size < 2:
        raise ValueError(
            f"fit set has {np.unique(fy).size} attribute class(es) after dropping unknown "
            "(-1) rows; a probe needs at least 2"
        )
    if ey.size == 0:
        raise ValueError("eval set has no clip with a known attribute")

    scaler = StandardScaler().fit(fx)
    fxs = scaler.transform(fx).astype(np.float32)
    exs = scaler.transform(ex).astype(np.float32)

    probas = {
        "linear": _linear_probe(fxs, fy, exs, num_classes),
        "mlp": _mlp_probe(
            fxs,
            fy,
            fg,
            exs,
            num_classes,
            seed=seed,
            hidden=mlp_hidden,
            max_epochs=mlp_max_epochs,
            patience=mlp_patience,
        ),
    }
    chance = 1.0 / num_classes
    majority = float(np.bincount(ey, minlength=num_classes).max() / ey.size)
    results = {}
    for name, proba in probas.items():
        pred = proba.argmax(axis=1)
        low, high = cluster_bootstrap_balanced_accuracy(
            ey, pred, eg, num_classes, n_resamples=bootstrap, seed=seed
        )
        results[name] = ProbeResult(
            bal_acc=balanced_accuracy(ey, pred, num_classes),
            bal_acc_ci_low=low,
            bal_acc_ci_high=high,
            macro_f1=float(f1_score(ey, pred, average="macro", zero_division=0)),
            roc_auc=_roc_auc(ey, proba, num_classes),
            chance=chance,
            majority_rate=majority,
            n_fit=int(fy.size),
            n_eval=int(ey.size),
            n_unknown=n_unknown,
        )
    return results


def _linear_probe(fx: np.ndarray, fy: np.ndarray, ex: np.ndarray, num_classes: int) -> np.ndarray:
    clf = LogisticRegression(class_weight="balanced", max_iter=1000)
    clf.fit(fx, fy)
    # Classes absent from fit get probability 0, so columns always index the class.
    proba = np.zeros((ex.shape[0], num_classes))
    proba[:, clf.classes_] = clf.predict_proba(ex)
    return proba


def _balanced_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    # sklearn's "balanced": n / (K_present * n_k); absent classes get 0.
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = y.size / (present.sum() * counts[present])
    return torch.as_tensor(w, dtype=torch.float32)


def _probe_val_split(
    y: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    # Identity-disjoint carve-out; without enough identities, no early stopping split.
    if np.unique(groups).size < 2:
        return np.arange(y.size), None
    splitter = GroupShuffleSplit(n_splits=1, test_size=_MLP_VAL_FRACTION, random_state=seed)
    tr, va = next(splitter.split(np.zeros(y.size), y, groups))
    if np.unique(y[tr]).size < 2 or va.size == 0:
        return np.arange(y.size), None
    return tr, va


def _mlp_probe(
    fx: np.ndarray,
    fy: np.ndarray,
    fg: np.ndarray,
    ex: np.ndarray,
    num_classes: int,
    *,
    seed: int,
    hidden: int,
    max_epochs: int,
    patience: int,
) -> np.ndarray:
    tr, va = _probe_val_split(fy, fg, seed)
    x_tr, y_tr = torch.from_numpy(fx[tr]), torch.from_numpy(fy[tr])
    # Without a validation split, stop on the training loss instead.
    x_va, y_va = (
        (x_tr, y_tr) if va is None else (torch.from_numpy(fx[va]), torch.from_numpy(fy[va]))
    )
    loss_fn = nn.CrossEntropyLoss(weight=_balanced_weights(fy[tr], num_classes))

    with torch.random.fork_rng(devices=[]):  # local seed, global RNG restored on exit
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(fx.shape[1], hidden),
            nn.ReLU(),
            nn.Dropout(_MLP_DROPOUT),
            nn.Linear(hidden, num_classes),
        )
        opt = torch.optim.Adam(model.parameters(), lr=_MLP_LR, weight_decay=_MLP_WEIGHT_DECAY)
        n = x_tr.shape[0]
        best_loss, best_state, stale = math.inf, None, 0
        for _ in range(max_epochs):
            model.train()
            order = torch.randperm(n) if n > _MLP_BATCH_SIZE else torch.arange(n)
            for start in range(0, n, _MLP_BATCH_SIZE):
                idx = order[start : start + _MLP_BATCH_SIZE]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(x_va), y_va))
            if val_loss < best_loss - 1e-6:
                best_loss, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(ex)), dim=1).double().numpy()


def _roc_auc(y: np.ndarray, proba: np.ndarray, num_classes: int) -> float:
    present = np.unique(y)
    if present.size < 2:
        return math.nan
    if num_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    # One-vs-rest macro over classes present in eval (sklearn's "ovr" needs all of them).
    return float(np.mean([roc_auc_score(y == k, proba[:, k]) for k in present]))


# --------------------------------------------------------------------------- input checks
def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        return (a.float() if a.dtype == torch.bfloat16 else a).numpy()
    return np.asarray(a)


def _as_int(a: Any, name: str, num_classes: int, allow_unknown: bool = False) -> np.ndarray:
    arr = _to_numpy(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class ids")
    arr = arr.astype(np.int64)
    low = UNKNOWN if allow_unknown else 0
    if arr.size and (arr.min() < low or arr.max() >= num_classes):
        raise ValueError(
            f"{name} values must lie in [{low}, {num_classes}), got [{arr.min()}, {arr.max()}]"
        )
    return arr


def _as_groups(groups: Any) -> np.ndarray:
    g = _to_numpy(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    # Mixed python objects cannot be sorted by np.unique; compare them as strings.
    return g.astype(str) if g.dtype == object else g


def _check_split(
    name: str, x: Any, y: Any, groups: Any, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _to_numpy(x).astype(np.float64, copy=False)
    if x.ndim != 2:
        raise ValueError(f"{name}_x must be [n, d], got shape {x.shape}")
    y = _as_int(y, f"{name}_y", num_classes, allow_unknown=True)
    g = _as_groups(groups)
    if not (x.shape[0] == y.size == g.size):
        raise ValueError(
            f"{name}_x, {name}_y and {name}_groups disagree in length: "
            f"{x.shape[0]}, {y.size}, {g.size}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name}_x holds NaN or infinite values")
    return x, y, g
