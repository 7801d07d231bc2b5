r"""Output-fairness metrics for a continuous hireability score.

The model outputs a score :math:`s_i` per clip, the ground truth is a score :math:`y_i`
and :math:`A_i \in \{0, \dots, G-1\}` is the candidate's group (gender or ethnicity;
``-1`` = unknown). Two families of quantities are reported per group and as gaps:

* **Regression view**: per-group error and mean score, with max-minus-min gaps.
* **Decision view**: the score is turned into an *invite* decision
  :math:`\hat D_i` and the truth into *qualified* :math:`D_i`, either with a fixed
  threshold or by keeping the top-q fraction; then demographic parity and equal
  opportunity are measured as in Hardt et al. (2016) and fairlearn.

The literature reports these as *differences* (max minus min over groups), which is
what this module returns; ``torchmetrics.classification.BinaryFairness`` returns
min/max *ratios* (its "EO" is the equal-opportunity TPR ratio). The ratios are returned
too (``dp_ratio``, ``eo_ratio``) for comparison.

:func:`output_fairness` is the functional form; :class:`OutputFairness` is the stateful
torchmetrics twin that accumulates over batches and processes (DDP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["OutputFairness", "output_fairness", "top_q_cutoff"]

UNKNOWN = -1


def _to_numpy(a: Any, dtype: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            a = a.float()
        a = a.numpy()
    arr = np.asarray(a).astype(dtype, copy=False)
    return arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr


def top_q_cutoff(values: Any, top_q: float) -> float:
    r"""The cutoff :math:`c` such that ``values >= c`` keeps (about) the top-q fraction.

    :math:`c` is the ``(1-q)`` quantile taken as an observed value ("higher" method):
    with :math:`v_{(0)} \le \dots \le v_{(n-1)}` the sorted values,

    .. math:: c = v_{(\lceil (1-q)(n-1) \rceil)}

    so :math:`\lfloor qn + 1 - q \rfloor` values are kept when they are distinct, and
    ties at the cutoff are all kept (two candidates with the same score get the same
    decision).
    """
    if not 0.0 < top_q <= 1.0:
        raise ValueError(f"top_q must lie in (0, 1], got {top_q}")
    v = _to_numpy(values, np.float64)
    if v.size == 0:
        raise ValueError("top_q_cutoff needs at least one value")
    return float(np.quantile(v, 1.0 - top_q, method="higher"))


def _gap(values: list[float]) -> float:
    return max(values) - min(values) if len(values) >= 2 else math.nan


def _ratio(values: list[float]) -> float:
    # 0/0 (nobody selected anywhere) carries no information: NaN, not "fair" (1) or "unfair" (0).
    if len(values) < 2 or max(values) == 0:
        return math.nan
    return min(values) / max(values)


def output_fairness(
    scores: Any,
    labels: Any,
    groups: Any,
    *,
    threshold: float | None = None,
    top_q: float | None = None,
    num_groups: int | None = None,
    people: Any = None,
    min_group_size: int = 1,
) -> dict[str, float]:
    r"""Per-group error, selection and opportunity of a continuous score, with their gaps.

    Rows with group ``-1`` (unknown) are left out of every group quantity and counted in
    ``n_unknown``. Below, :math:`g` ranges over the groups :math:`\mathcal{G}` present
    among the known rows, :math:`n_g` is the group's size.

    **Regression view**

    * ``mae/<g>``: mean absolute error in the group,
      :math:`\text{MAE}_g = \frac{1}{n_g}\sum_{i: A_i = g} |s_i - y_i|`;
      ``mae_gap`` :math:`= \max_g \text{MAE}_g - \min_g \text{MAE}_g`.
    * ``mean_score/<g>``: :math:`\bar s_g = \frac{1}{n_g}\sum_{i: A_i=g} s_i`;
      ``mean_score_gap`` :math:`= \max_g \bar s_g - \min_g \bar s_g`.
    * ``n/<g>``: :math:`n_g`.

    **Decision view.** Exactly one of ``threshold`` / ``top_q`` sets the rule:

    * threshold :math:`t`: invite :math:`\hat D_i = [s_i \ge t]`, qualified
      :math:`D_i = [y_i \ge t]`;
    * top-q: invite :math:`\hat D_i = [s_i \ge c_s]`, qualified :math:`D_i = [y_i \ge c_y]`,
      where :math:`c_s`, :math:`c_y` are :func:`top_q_cutoff` of *all* scores / labels,
      unknown-group rows included (the shortlist is drawn from the whole pool, blind
      to groups).

    * ``selection_rate/<g>``: :math:`P(\hat D = 1 \mid A = g)`, the share invited.
    * ``dp_diff``, demographic-parity difference: the gap in selection rates,
      :math:`\max_g P(\hat D=1 \mid A=g) - \min_g P(\hat D=1 \mid A=g)`; 0 when every
      group is invited at the same rate, whatever their qualifications.
    * ``dp_ratio``: :math:`\min_g / \max_g` selection rate (the "four-fifths rule"
      quantity); NaN when nobody is invited (0/0).
    * ``tpr/<g>``: true-positive rate :math:`P(\hat D = 1 \mid D = 1, A = g)`, the share
      of the group's qualified candidates who are invited; NaN when the group has no
      qualified member.
    * ``eo_diff``, equal-opportunity difference: the TPR gap
      :math:`\max_g \text{TPR}_g - \min_g \text{TPR}_g` over groups with at least one
      qualified member; 0 when qualified candidates are invited at the same rate in every
      group.
    * ``eo_ratio``: :math:`\min_g / \max_g` TPR over the same groups; NaN when 0/0.
    * ``eo_groups_excluded``: number of groups left out of the TPR gap (no qualified
      member, or empty when ``num_groups`` is given).

    All gaps and ratios are NaN when fewer than two groups take part (nothing to compare).

    **Small groups.** A group with fewer than ``min_group_size`` people (rows, when
    ``people`` is not given) but at least one is suppressed: every ``<key>/<g>``, ``n/<g>``
    included, is NaN and the group is left out of the gaps, so no figure describes a handful
    of individuals. ``groups_suppressed`` counts them.

    Args:
        scores: model scores :math:`s`, shape ``[n]``.
        labels: ground-truth scores :math:`y`, shape ``[n]``.
        groups: integer group per row, ``-1`` for unknown, shape ``[n]``.
        threshold: decision threshold on scores and labels.
        top_q: fraction in ``(0, 1]`` kept by the top-q rule.
        num_groups: if given, groups must lie in ``[-1, num_groups)`` and keys are emitted
            for every group ``0..num_groups-1`` (an empty group has ``n/<g> = 0``, NaN
            elsewhere, and is left out of the gaps), so logged keys stay stable.
        people: the person of each row (any hashable ids), for counting group sizes.
        min_group_size: smallest group reported (see "Small groups").

    Returns:
        A flat ``dict[str, float]`` with the keys above plus ``n_unknown`` and
        ``groups_suppressed``.
    """
    if (threshold is None) == (top_q is None):
        raise ValueError("give exactly one of threshold= or top_q=")
    s = _to_numpy(scores, np.float64)
    y = _to_numpy(labels, np.float64)
    a = _to_numpy(groups, np.float64)
    if not (s.ndim == y.ndim == a.ndim == 1) or not (s.size == y.size == a.size):
        raise ValueError(
            f"scores, labels and groups must be 1-D of one length, got shapes "
            f"{s.shape}, {y.shape}, {a.shape}"
        )
    if s.size == 0:
        raise ValueError("output_fairness needs at least one row")
    if not (np.isfinite(s).all() and np.isfinite(y).all()):
        raise ValueError("scores and labels must be finite")
    if not np.all(np.mod(a, 1) == 0) or (a.min() < UNKNOWN):
        raise ValueError("groups must be integers >= -1 (-1 = unknown)")
    a = a.astype(np.int64)
    if num_groups is not None and a.max() >= num_groups:
        raise ValueError(f"group id {a.max()} out of range for num_groups={num_groups}")

    if threshold is not None:
        cut_s = cut_y = float(threshold)
    else:
        cut_s, cut_y = top_q_cutoff(s, top_q), top_q_cutoff(y, top_q)
    invite = s >= cut_s
    qualified = y >= cut_y

    known = a != UNKNOWN
    ids = range(num_groups) if num_groups is not None else np.unique(a[known]).tolist()
    who = None if people is None else np.asarray(people)
    out: dict[str, float] = {}
    mae, mean_score, sel, tpr = [], [], [], []
    excluded = suppressed = 0
    for g in ids:
        m = a == g
        n_g = int(m.sum())
        size = n_g if who is None else int(np.unique(who[m]).size)
        out[f"n/{g}"] = float(n_g)
        if 0 < size < min_group_size:
            out[f"n/{g}"] = math.nan
            n_g = 0
            suppressed += 1
        if n_g == 0:
            for key in ("mae", "mean_score", "selection_rate", "tpr"):
                out[f"{key}/{g}"] = math.nan
            excluded += 1
            continue
        out[f"mae/{g}"] = float(np.abs(s[m] - y[m]).mean())
        out[f"mean_score/{g}"] = float(s[m].mean())
        out[f"selection_rate/{g}"] = float(invite[m].mean())
        mae.append(out[f"mae/{g}"])
        mean_score.append(out[f"mean_score/{g}"])
        sel.append(out[f"selection_rate/{g}"])
        q = m & qualified
        if q.any():
            out[f"tpr/{g}"] = float(invite[q].mean())
            tpr.append(out[f"tpr/{g}"])
        else:
            out[f"tpr/{g}"] = math.nan
            excluded += 1

    out["mae_gap"] = _gap(mae)
    out["mean_score_gap"] = _gap(mean_score)
    out["dp_diff"] = _gap(sel)
    out["dp_ratio"] = _ratio(sel)
    out["eo_diff"] = _gap(tpr)
    out["eo_ratio"] = _ratio(tpr)
    out["eo_groups_excluded"] = float(excluded)
    out["n_unknown"] = float((~known).sum())
    out["groups_suppressed"] = float(suppressed)
    return out


class OutputFairness(Metric):
    r"""Stateful twin of :func:`output_fairness`: accumulates scores, labels and groups.

    Top-q cutoffs and group rates are not decomposable into per-batch sums, so the raw
    rows are kept as ``cat`` states (gathered across processes under DDP) and
    :meth:`compute` calls :func:`output_fairness` on the concatenation. Memory grows with
    the number of rows (three numbers per clip).

    Args:
        num_groups: number of groups; keys are emitted for every group ``0..num_groups-1``.
        threshold: decision threshold (see :func:`output_fairness`).
        top_q: top-q fraction (see :func:`output_fairness`). Exactly one of the two.

    Example:
        >>> m = OutputFairness(num_groups=2, threshold=0.5)
        >>> m.update(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
        >>> m.compute()["dp_diff"]
        1.0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        num_groups: int,
        threshold: float | None = None,
        top_q: float | None = None,
        min_group_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (threshold is None) == (top_q is None):
            raise ValueError("give exactly one of threshold= or top_q=")
        if top_q is not None and not 0.0 < top_q <= 1.0:
            raise ValueError(f"top_q must lie in (0, 1], got {top_q}")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups = num_groups
        self.threshold = threshold
        self.top_q = top_q
        self.min_group_size = min_group_size
        self.add_state("people", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
               people: torch.Tensor | None = None) -> None:
        """Add a batch of rows; ``groups`` holds ``-1`` for unknown; ``people`` (integer
        ids) makes ``min_group_size`` count people instead of rows."""
        scores, labels, groups = scores.reshape(-1), labels.reshape(-1), groups.reshape(-1)
        if not (scores.numel() == labels.numel() == groups.numel()):
            raise ValueError(
                f"scores, labels and groups differ in length: "
                f"{scores.numel()}, {labels.numel()}, {groups.numel()}"
            )
        if groups.numel() and (groups.min() < UNKNOWN or groups.max() >= self.num_groups):
            raise ValueError(f"groups must lie in [-1, {self.num_groups})")
        self.scores.append(scores.detach().float())
        self.labels.append(labels.detach().float())
        self.groups.append(groups.detach().long())
        if people is not None:
            self.people.append(people.detach().reshape(-1).long())

    def _people(self):
        # a list of batches before a DDP sync, one tensor after it
        p = self.people
        empty = len(p) == 0 if isinstance(p, list) else p.numel() == 0
        return None if empty else dim_zero_cat(p).cpu().numpy()

    def compute(self) -> dict[str, float]:
        """:func:`output_fairness` on every row seen since the last reset."""
        return output_fairness(
            dim_zero_cat(self.scores),
            dim_zero_cat(self.labels),
            dim_zero_cat(self.groups),
            threshold=self.threshold,
            top_q=self.top_q,
            num_groups=self.num_groups,
            people=self._people(),
            min_group_size=self.min_group_size,
        )


@dataclass
class ScoreGroups:
    """What the report plots of the test split: every clip's score, each attribute's group
    per clip (-1 where unknown or suppressed), and the invite decision's cut-off."""
    score: np.ndarray
    groups: dict[str, np.ndarray]
    cutoff: float | None
    cutoff_label: str
