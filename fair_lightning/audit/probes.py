"""Post-hoc sensitive-attribute attackers on frozen representations.

A fooled adversary is not evidence that a representation is clean: Elazar & Goldberg
(2018) showed that an adversary trained alongside the encoder can sit at chance while a
*fresh* classifier, trained afterwards on the frozen representation, still recovers the
attribute. The same holds for any probe we pick ourselves, so the audit does not trust one:
an :class:`AttackSuite` tunes several attacker families by grouped cross-validation on a
fit split, at clip and at person level, and the leakage is the eval score of the attacker
that cross-validation ranks best. Eval identities are disjoint from fit identities, and
intervals come from a bootstrap over people.

Functional pieces (:func:`balanced_accuracy`,
:func:`cluster_bootstrap_balanced_accuracy`) are usable on their own.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from data_modules.schema import UNKNOWN
from fair_lightning.audit.attackers import FAMILIES, Candidate

__all__ = [
    "AttackSuite",
    "AttackerResult",
    "SuiteResult",
    "attack_attribute",
    "balanced_accuracy",
    "cluster_bootstrap_balanced_accuracy",
]


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


def pearson(a: Any, b: Any) -> float:
    """Pearson r of two sequences; NaN for fewer than 3 values or a constant one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


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


# --------------------------------------------------------------------------- the suite
LEVELS = ("clip", "person")


@dataclass
class AttackerResult:
    """What one attacker recovers about one attribute from one representation.

    Attributes:
        attacker: ``<family>`` (clip level: one prediction per clip),
            ``person_vote_<family>`` (the clip attacker's scores averaged over a person's
            clips) or ``person_mean_<family>`` (trained and applied on each person's mean
            representation); see :class:`AttackSuite`.
        level: ``clip`` or ``person`` (what one eval row and one bootstrap unit are).
        params: the hyperparameters grouped cross-validation chose on the fit split.
        cv_bal_acc: that choice's cross-validated balanced accuracy on the fit split.
        bal_acc: balanced accuracy on the eval split (see :func:`balanced_accuracy`).
        bal_acc_ci_low, bal_acc_ci_high: 95% bootstrap percentile interval, resampling
            people (clip level: all clips of each drawn person).
        macro_f1: unweighted mean of per-class F1.
        roc_auc: binary: AUC of the class-1 score; multi-class: one-vs-rest macro AUC over
            the classes present in eval. NaN if eval holds a single class.
        chance: ``1 / num_classes``, the balanced accuracy of any attribute-blind rule.
        majority_rate: share of the largest class in eval (accuracy of a constant guess).
        n_fit, n_eval: rows (clips or people) used after dropping unknown attributes.
        n_unknown: clips dropped because the attribute is ``-1`` (fit + eval).
    """

    attacker: str
    level: str
    params: str
    cv_bal_acc: float
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

    NUMERIC = ("cv_bal_acc", "bal_acc", "bal_acc_ci_low", "bal_acc_ci_high", "macro_f1",
               "roc_auc", "chance", "majority_rate", "n_fit", "n_eval", "n_unknown")

    def as_dict(self) -> dict[str, float]:
        """The numeric fields as floats, ready for a logger."""
        return {k: float(getattr(self, k)) for k in self.NUMERIC}


@dataclass
class SuiteResult:
    """Every attacker's result, and the leakage at each level: the result of the attacker
    that cross-validation on the fit split ranked best (never the best on eval, which would
    be biased upward when nothing leaks)."""

    attackers: list[AttackerResult]
    leak: dict[str, AttackerResult]

    def __getitem__(self, attacker: str) -> AttackerResult:
        return next(r for r in self.attackers if r.attacker == attacker)


@dataclass
class _Fitted:
    attacker: str
    level: str
    cand: Candidate
    predict: Any
    score: float  # cross-validated balanced accuracy at this attacker's level


class AttackSuite:
    r"""The strongest attacker we can select without looking at the eval split.

    Families (:mod:`fair_lightning.audit.attackers`): ``linear`` (ridge classification),
    ``kernel`` (RBF kernel ridge classification), ``mlp`` (two hidden layers) and ``svm``
    (RBF SVM), every hyperparameter chosen by grouped ``StratifiedGroupKFold``
    cross-validation on the fit split (folds of whole people). The default pair is the
    strongest per second measured on this benchmark's representations.

    Two levels, because whoever holds h holds several clips of one person:

    * clip: each family predicts the attribute of each clip;
    * person: ``person_vote_<family>`` averages a clip attacker's scores over a person's
      clips (its hyperparameters chosen by the cross-validated *person* score of those
      averages), and ``person_mean_<family>`` trains on each person's mean representation.

    At each level the **leakage** is the eval score of the attacker whose cross-validated
    fit score is highest:

    .. math::
        \text{leak}_\ell = \text{BA}_\text{eval}(a^*_\ell), \qquad
        a^*_\ell = \arg\max_{a \in \mathcal{A}_\ell} \text{BA}_\text{CV, fit}(a)

    Inputs are standardised with fit statistics (person means again with person-mean
    statistics); rows whose attribute is ``-1`` are left out and counted. A person's
    attribute is the most frequent known value over their clips.

    `fit` depends on the fit split only, so one fitted suite can score several eval
    splits (e.g. val at the end of fit and test afterwards, when the weights are the same).
    """

    def __init__(self, num_classes: int, *, families=("linear", "kernel"),
                 person_level: bool = True, cv_folds: int = 4, seed: int = 0,
                 device: str = "cpu"):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown or not families:
            raise ValueError(f"attacker families must be a non-empty subset of "
                             f"{sorted(FAMILIES)}, got {list(families)}")
        if cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {cv_folds}")
        self.num_classes = num_classes
        self.families = [FAMILIES[f]() for f in families]
        for fam in self.families:  # the families that compute in torch run there
            fam.device = str(device)
        self.person_level = person_level
        self.cv_folds = cv_folds
        self.seed = seed
        self.fitted: list[_Fitted] = []

    # ------------------------------------------------------------------ fit
    def fit(self, fit_x: Any, fit_y: Any, fit_groups: Any) -> AttackSuite:
        with one_thread():
            return self._fit(fit_x, fit_y, fit_groups)

    def _fit(self, fit_x: Any, fit_y: Any, fit_groups: Any) -> AttackSuite:
        k = self.num_classes
        x, y, g = _check_split("fit", fit_x, fit_y, fit_groups, k)
        known = y != UNKNOWN
        self.n_unknown_fit = int((~known).sum())
        x, y, g = x[known], y[known], g[known]
        if np.unique(y).size < 2:
            raise ValueError(f"fit set has {np.unique(y).size} attribute class(es) after "
                             "dropping unknown (-1) rows; an attacker needs at least 2")
        self.fit_groups = set(g.tolist())
        self.n_fit_clips = y.size
        self.scale = _Scaler(x)
        xs = self.scale(x)
        folds = grouped_folds(y, g, self.cv_folds, self.seed)
        pid, py = _persons(g, y, k)
        self.fitted = []
        for fam in self.families:
            cands = self._cross_validate(fam, xs, y, folds)
            self._keep(fam, cands, xs, y, "clip", fam.name, lambda c: _ba(y, c.oof))
            if self.person_level:
                self._keep(fam, cands, xs, y, "person", f"person_vote_{fam.name}",
                           lambda c: _ba(py, _group_mean(c.oof, pid)))
        if self.person_level:
            pmeans = _group_mean(xs, pid)
            self.person_scale = _Scaler(pmeans)
            px = self.person_scale(pmeans)
            self.n_fit_people = py.size
            # the same people held out together as at clip level
            pfolds = [(np.unique(pid[tr]), np.unique(pid[va])) for tr, va in folds]
            for fam in self.families:
                self._keep(fam, self._cross_validate(fam, px, py, pfolds), px, py, "person",
                           f"person_mean_{fam.name}", lambda c: _ba(py, c.oof))
        return self

    def _cross_validate(self, fam, x, y, folds) -> list[Candidate]:
        if folds:
            return fam.cross_validate(x, y, folds, self.num_classes, self.seed)
        # nothing to hold out: the grid's first point, untuned (its CV score is NaN)
        return [Candidate(fam.name, fam.grid(x.shape[1])[0],
                          np.full((y.size, self.num_classes), np.nan))]

    def _keep(self, fam, cands, x, y, level, attacker, cv_score):
        scores = [cv_score(c) for c in cands]
        best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
        cand = cands[best]
        # a vote re-uses the clip attacker's refit when cross-validation chose the same point
        clip = next((f for f in self.fitted if f.attacker == fam.name), None)
        if attacker.startswith("person_vote_") and clip.cand.params == cand.params:
            predict = clip.predict
        else:
            predict = fam.fit(x, y, cand.params, self.num_classes, self.seed)
        self.fitted.append(_Fitted(attacker, level, cand, predict, float(scores[best])))

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, eval_x: Any, eval_y: Any, eval_groups: Any, *, bootstrap: int = 1000
                 ) -> SuiteResult:
        with one_thread():
            return self._evaluate(eval_x, eval_y, eval_groups, bootstrap)

    def _evaluate(self, eval_x, eval_y, eval_groups, bootstrap) -> SuiteResult:
        if not self.fitted:
            raise RuntimeError("AttackSuite.evaluate() before fit()")
        k = self.num_classes
        x, y, g = _check_split("eval", eval_x, eval_y, eval_groups, k)
        _check_disjoint(self.fit_groups, g)
        if x.shape[1] != self.scale.mean.size:
            raise ValueError(f"fit_x has {self.scale.mean.size} features but eval_x has "
                             f"{x.shape[1]}")
        known = y != UNKNOWN
        n_unknown = self.n_unknown_fit + int((~known).sum())
        x, y, g = x[known], y[known], g[known]
        if y.size == 0:
            raise ValueError("eval set has no clip with a known attribute")
        xs = self.scale(x)
        pid, py = _persons(g, y, k)
        clip_scores = {}
        results = []
        for f in self.fitted:
            if f.level == "clip":
                scores = clip_scores[f.attacker] = f.predict(xs)
                truth, groups, n_fit = y, g, self.n_fit_clips
            elif f.attacker.startswith("person_vote_"):
                fam = f.attacker.removeprefix("person_vote_")
                clip = next(c for c in self.fitted if c.attacker == fam)
                s = clip_scores[fam] if clip.predict is f.predict else f.predict(xs)
                scores, truth, groups, n_fit = (_group_mean(s, pid), py, np.arange(py.size),
                                                self.n_fit_clips)
            else:
                scores = f.predict(self.person_scale(_group_mean(xs, pid)))
                truth, groups, n_fit = py, np.arange(py.size), self.n_fit_people
            pred = scores.argmax(1)
            low, high = cluster_bootstrap_balanced_accuracy(truth, pred, groups, k,
                                                            n_resamples=bootstrap,
                                                            seed=self.seed)
            results.append(AttackerResult(
                attacker=f.attacker, level=f.level, params=f.cand.describe(),
                cv_bal_acc=f.score, bal_acc=balanced_accuracy(truth, pred, k),
                bal_acc_ci_low=low, bal_acc_ci_high=high,
                macro_f1=float(f1_score(truth, pred, average="macro", zero_division=0)),
                roc_auc=_roc_auc(truth, scores, k), chance=1.0 / k,
                majority_rate=float(np.bincount(truth, minlength=k).max() / truth.size),
                n_fit=n_fit, n_eval=int(truth.size), n_unknown=n_unknown))
        leak = {}
        for level in LEVELS:
            pool = [(f.score, i) for i, f in enumerate(self.fitted) if f.level == level]
            if pool:
                # first among equals: the families' order puts the simplest first
                best = max(pool, key=lambda t: (np.nan_to_num(t[0], nan=-1.0), -t[1]))[1]
                leak[level] = results[best]
        return SuiteResult(results, leak)


def attack_attribute(fit_x: Any, fit_y: Any, fit_groups: Any, eval_x: Any, eval_y: Any,
                     eval_groups: Any, num_classes: int, *, families=("linear", "kernel"),
                     person_level: bool = True, cv_folds: int = 4, seed: int = 0,
                     bootstrap: int = 1000) -> SuiteResult:
    """Fit an :class:`AttackSuite` on one split and score it on an identity-disjoint one.

    Args:
        fit_x, eval_x: representations, ``[n, d]`` (numpy or tensors).
        fit_y, eval_y: attribute classes in ``[0, num_classes)`` or ``-1`` for unknown.
        fit_groups, eval_groups: the person of each clip (strings or integers).
        num_classes: 2 for gender, 3 for ethnicity.
        families, person_level, cv_folds, seed: see :class:`AttackSuite`.
        bootstrap: bootstrap resamples of people for the intervals (0: no interval).

    Raises:
        ValueError: fit and eval share a person, fewer than two classes remain in fit, no
            eval clip remains, or shapes/labels are inconsistent.
    """
    # the identity check first: it is the one mistake that makes every number wrong
    _, _, fg = _check_split("fit", fit_x, fit_y, fit_groups, num_classes)
    _, _, eg = _check_split("eval", eval_x, eval_y, eval_groups, num_classes)
    _check_disjoint(set(fg.tolist()), eg)
    suite = AttackSuite(num_classes, families=families, person_level=person_level,
                        cv_folds=cv_folds, seed=seed)
    return suite.fit(fit_x, fit_y, fit_groups).evaluate(eval_x, eval_y, eval_groups,
                                                        bootstrap=bootstrap)


@lru_cache(maxsize=16)
def _grouped_folds(y: bytes, g: tuple, n_splits: int, seed: int):
    y = np.frombuffer(y, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return tuple(splitter.split(np.zeros(y.size), y, np.asarray(g)))


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of whole people; the same attribute and people give the same folds
    for every layer, computed once (the search for balanced folds is not free)."""
    n_groups = np.unique(groups).size
    if n_groups < 2:
        return []  # nothing to hold out: the grid's first point, untuned
    return list(_grouped_folds(np.ascontiguousarray(y, dtype=np.int64).tobytes(),
                               tuple(groups.tolist()), min(n_splits, n_groups), seed))


@contextmanager
def one_thread():
    """Run on one thread (BLAS and torch), then restore. The attackers' matrices are a few
    hundred rows: threads cost more in synchronisation than they give, and next to a
    training process they oversubscribe the cores (measured: 2 threads ran the suite 2.6x
    slower on 2 loaded cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _check_disjoint(fit_groups: set, eval_groups: np.ndarray) -> None:
    shared = fit_groups & set(eval_groups.tolist())
    if shared:
        sample = sorted(map(str, shared))[:5]
        raise ValueError(
            f"fit and eval share {len(shared)} identities (e.g. {sample}); attackers must be "
            "scored on identity-disjoint data, otherwise they can recognise the person "
            "instead of the attribute")


class _Scaler:
    """Per-feature z-score with the statistics of the rows it was built on."""

    def __init__(self, x: np.ndarray):
        self.mean = x.mean(0)
        self.std = np.where(x.std(0) > 1e-12, x.std(0), 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def _ba(y: np.ndarray, scores: np.ndarray) -> float:
    if not np.isfinite(scores).all():
        return math.nan
    return float(_bal_acc_from_counts(*_per_class_counts(y, scores.argmax(1), int(
        scores.shape[1]))))


def _persons(groups: np.ndarray, y: np.ndarray, num_classes: int):
    """Person index of every row, and each person's attribute (its most frequent value)."""
    _, pid = np.unique(groups, return_inverse=True)
    counts = np.zeros((pid.max() + 1, num_classes), dtype=np.int64)
    np.add.at(counts, (pid, y), 1)
    return pid, counts.argmax(1)


def _group_mean(values: np.ndarray, pid: np.ndarray) -> np.ndarray:
    sums = np.zeros((pid.max() + 1, values.shape[1]))
    np.add.at(sums, pid, values)
    return sums / np.bincount(pid)[:, None]


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
