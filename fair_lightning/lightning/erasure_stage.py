"""The erasure stage, fitted after the last epoch and written into the tested checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from fair_lightning.audit.probes import pearson
from fair_lightning.lightning.collect import collect_rows, log_to_loggers
from fair_lightning.lightning.summary import SummaryPart
from fair_lightning.models.adversaries import one_hot_attributes

log = logging.getLogger(__name__)


ERASURE_KEY = "erasure_stage"  # the stage's figures, in the checkpoint it wrote


class ErasureStage(L.Callback, SummaryPart):
    """After the last epoch, before the end-of-fit audit: fit the module's `erased_head`
    (eraser, task subspace, refitted head; `fair_lightning.models.erasure`) on the
    training split, and write it into `last.ckpt`, which is what the run tests.

    Label-free with `erasure.proxy=face`: the training split is read through a loader
    without sensitive attributes, and the proxy is the adversary's face embedding. With
    `labels`, the loader keeps them (the label-using reference). Logged: `erase/*` (the
    variance kept, the fit time, val Pearson of the head before and after)."""

    def __init__(self, datamodule, last_ckpt: Path):
        self.dm = datamodule
        self.last_ckpt = Path(last_ckpt)
        self.metrics: dict[str, float] = {}

    def _inputs(self, module, split: str) -> dict[str, np.ndarray]:
        labels = module.erasure_proxy == "labels"
        proxy = module.erased_head.fits_proxy

        def rows(batch):
            out = module.scorer(batch)
            if not proxy:  # the task subspace alone: no proxy is read
                z = torch.zeros(len(batch), 1)
            elif labels:
                z = one_hot_attributes(batch.sensitive.gender, batch.sensitive.ethnicity)
            else:
                z = module.face_proxy(batch)
            return {"h": out.h.float().cpu().numpy(), "z": z.float().cpu().numpy(),
                    "score": out.score.float().cpu().numpy(),
                    "label": batch.label.float().cpu().numpy(),
                    "merit": batch.merit.float().cpu().numpy()}

        return collect_rows(module, self.dm.eval_dataloader(split, sensitive=labels and proxy),
                            rows)

    def on_train_end(self, trainer, pl_module):
        self.fit(trainer, pl_module)

    def summary(self) -> dict[str, float]:
        """The stage's figures (`erase/*`, `time/erasure_s`)."""
        return dict(self.metrics)

    def ensure_fitted(self, trainer, pl_module) -> None:
        """For a run resumed after its last epoch whose checkpoint predates the stage."""
        if not pl_module.erased_head.fitted:
            self.fit(trainer, pl_module)
        elif not self.metrics:  # fitted by the run that was killed: its figures are saved
            saved = torch.load(self.last_ckpt, map_location="cpu", weights_only=True)
            self.metrics = dict(saved.get(ERASURE_KEY, {}))
            if trainer.is_global_zero and self.metrics:  # the resumed log cut them back
                log_to_loggers(trainer, self.metrics)

    def fit(self, trainer, module) -> None:
        self.fit_head(module)
        if trainer.is_global_zero:
            self._write_into_last(module)
            log_to_loggers(trainer, self.metrics)
            log.info("erasure stage: kept %.3f of h's variance, val Pearson %.3f -> %.3f (%.1fs)",
                     self.metrics.get("erase/kept_variance", float("nan")),
                     self.metrics["erase/val_pearson_before"],
                     self.metrics["erase/val_pearson_after"], self.metrics["time/erasure_s"])
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank tests last.ckpt: it must hold the eraser first

    def fit_head(self, module) -> dict[str, float]:
        """Fit `module.erased_head` on the training split; its figures (`erase/*`) on val."""
        t0 = time.time()
        train = self._inputs(module, "train")
        head = module.erased_head
        stats = head.fit(*(torch.from_numpy(train[k]) for k in ("h", "z", "identity", "label")))
        head.to(module.device)
        self.metrics = {f"erase/{k}": float(v) for k, v in stats.items()}
        val = self._inputs(module, "val")
        with torch.no_grad():
            z = torch.from_numpy(val["z"]).to(module.device) if head.needs_proxy else None
            *_, after = head(torch.from_numpy(val["h"]).to(module.device), z)
        after = after.float().cpu().numpy()
        for name, score in (("before", val["score"]), ("after", after)):
            self.metrics[f"erase/val_pearson_{name}"] = pearson(score, val["label"])
            if np.isfinite(val["merit"]).all():
                self.metrics[f"erase/val_pearson_merit_{name}"] = pearson(score, val["merit"])
        self.metrics["time/erasure_s"] = time.time() - t0
        return self.metrics

    def _write_into_last(self, module) -> None:
        """The tested checkpoint gets the fitted eraser: last.ckpt as the last epoch wrote it
        (loops, optimizers, resume state), plus the `erased_head` entries, written
        atomically. A run resumed from it finds the stage done."""
        from data_modules.files import atomic_write

        ckpt = torch.load(self.last_ckpt, map_location="cpu", weights_only=True)
        ckpt["state_dict"].update({f"erased_head.{k}": v.detach().cpu() for k, v in
                                   module.erased_head.state_dict().items()})
        ckpt[ERASURE_KEY] = dict(self.metrics)
        atomic_write(self.last_ckpt, lambda tmp: torch.save(ckpt, tmp))
