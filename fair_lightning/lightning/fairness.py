"""Output fairness as a callback: per-group gaps of the score and the invite decision on
val and test (`fair_lightning.audit.fairness`), read from the val/test batches."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch.distributed as dist

from data_modules.schema import SENSITIVE
from fair_lightning.audit.fairness import OutputFairness, ScoreGroups, top_q_cutoff


def _rows(m: OutputFairness) -> tuple[np.ndarray, np.ndarray]:
    """Scores and groups accumulated by a fairness metric, from every rank."""
    from torchmetrics.utilities import dim_zero_cat

    with m.sync_context(should_sync=dist.is_available() and dist.is_initialized()):
        return (dim_zero_cat(m.scores).cpu().numpy(), dim_zero_cat(m.groups).cpu().numpy())


class OutputFairnessCallback(L.Callback):
    """Per-group error and score gaps, demographic parity and equal opportunity of the
    invite decision, on val (`val_fair/`) and test (`fair/`). See `fair_lightning.audit.fairness`.

    Also `<prefix>/gender/score_corr`: Pearson correlation between the predicted score and
    gender (0/1, point-biserial), clips with unknown gender left out.
    """

    def __init__(self, threshold: float | None = None, top_q: float | None = None,
                 min_group_size: int = 1):
        self.threshold = threshold
        self.top_q = top_q
        self.min_group_size = min_group_size
        self.metrics: dict[str, dict[str, OutputFairness]] = {}
        self.test_scores: dict[str, np.ndarray] = {}
        self.test_cutoff: float | None = None  # the score the invite decision starts at

    def cutoff_label(self) -> str:
        return ("invite threshold" if self.threshold is not None
                else f"invite cut-off: top {100 * self.top_q:.0f}%")

    def test_score_groups(self) -> ScoreGroups | None:
        """The test scores by group for the report's plot (None before a test epoch)."""
        if "score" not in self.test_scores:
            return None
        return ScoreGroups(self.test_scores["score"],
                           {a: self.test_scores[a] for a in SENSITIVE if a in self.test_scores},
                           self.test_cutoff, self.cutoff_label())

    def _metric(self, stage, attr, device):
        per = self.metrics.setdefault(stage, {})
        if attr not in per:
            per[attr] = OutputFairness(num_groups=SENSITIVE[attr], threshold=self.threshold,
                                       top_q=self.top_q,
                                       min_group_size=self.min_group_size).to(device)
        return per[attr]

    def _update(self, stage, outputs, batch, device):
        s = batch.sensitive
        for attr in SENSITIVE:
            self._metric(stage, attr, device).update(
                outputs["score"].detach(), batch.label, getattr(s, attr), batch.identity)

    def _compute(self, stage, prefix, pl_module):
        out = {}
        for attr, m in self.metrics.get(stage, {}).items():
            values = m.compute()
            out.update({f"{prefix}/{attr}/{k}": float(v) for k, v in values.items()})
            if attr == "gender":
                scores, groups = _rows(m)
                known = groups >= 0
                if known.sum() > 2 and len(np.unique(groups[known])) == 2:
                    out[f"{prefix}/gender/score_corr"] = float(
                        np.corrcoef(scores[known], groups[known])[0, 1])
            if stage == "test":
                scores, groups = _rows(m)
                for g in range(SENSITIVE[attr]):  # a suppressed group is not plotted either
                    if math.isnan(values[f"n/{g}"]):
                        groups = np.where(groups == g, -1, groups)
                self.test_scores["score"] = scores
                self.test_scores[attr] = groups
                self.test_cutoff = (float(self.threshold) if self.threshold is not None
                                    else top_q_cutoff(scores, self.top_q))
            m.reset()
        if out:
            pl_module.log_dict(out, sync_dist=False, rank_zero_only=True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if not trainer.sanity_checking:
            self._update("val", outputs, batch, pl_module.device)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            self.metrics.pop("val", None)
            return
        self._compute("val", "val_fair", pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0):
        self._update("test", outputs, batch, pl_module.device)

    def on_test_epoch_end(self, trainer, pl_module):
        self._compute("test", "fair", pl_module)
