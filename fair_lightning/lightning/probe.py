"""The leakage audit as a callback: the attacker suite (`fair_lightning.audit.engine`) on
the run's representations at the end of fit, every few epochs and on test.

It reads gender and ethnicity through its own path (the datamodule's `eval_dataloader`),
never through the training step, and logs aggregates only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch.distributed as dist

from fair_lightning.audit.engine import (
    AttackAudit,
    audit_time_key,
    fingerprint,
    identity_disjoint,
    leak_prefix,
    rows_to_metrics,
    selected_attackers,
)
from fair_lightning.lightning.collect import extract_representations, log_to_loggers
from fair_lightning.lightning.summary import SummaryPart
from fair_lightning.ops.runtime import gather_objects

log = logging.getLogger(__name__)


class SensitiveAttributeProbe(L.Callback, SummaryPart):
    """Measure gender/ethnicity leakage with fresh attackers on frozen representations.

    Elazar & Goldberg (2018): an adversary at chance can hide information that a fresh
    classifier still recovers, and a probe we chose can miss what another finds. So each
    layer and attribute gets the attacker suite of :class:`fair_lightning.audit.probes.AttackSuite`
    (families tuned by grouped cross-validation on `fit_split`, at clip and person level),
    scored on an identity-disjoint split with a 95% bootstrap interval over people.

    When: every `every_n_epochs` validation epochs (prefix `val_probe/`, eval on val), at the
    end of fit (`fit_probe/`, eval on val) and on test (`probe/`, eval on `eval_split`).
    Under DDP all ranks extract and gather; rank 0 alone fits the attackers.
    """

    def __init__(self, cfg, datamodule, seed: int = 0):
        self.cfg = cfg
        self.dm = datamodule
        self.seed = seed
        self.audit = AttackAudit(cfg, seed)
        self.results: dict[str, list[dict]] = {}  # prefix -> rows
        self.timings: dict[str, float] = {}
        self.skipped: dict[str, dict[str, str]] = {}  # prefix -> attribute -> why not scored
        self.refused: dict[str, dict[str, float]] = {}  # prefix -> layer -> its spread
        self.proxy: dict[str, float] = {}  # the face proxy's retrieval figures on test people
        self.shared_dropped: dict[str, int] = {}  # prefix -> eval people also in fit_split
        self.plot_path: Path | None = None
        self.fit_audited = False
        self._fit_reps: tuple[str, dict] | None = None  # (weights digest, representations)
        self.fit_reps_reused: dict[str, bool] = {}  # prefix -> fit split not extracted again

    def _fit_representations(self, module) -> tuple[dict, bool]:
        """The fit split's representations: extracted once per set of weights. The test
        audit of the final checkpoint reuses the end-of-fit audit's (the weights are the
        same bytes); a tested `best` checkpoint has other weights and is extracted again."""
        # the scorer and the erasure stage (what the head reads) decide the representations
        parts = [module.scorer] + [m for m in [getattr(module, "erased_head", None),
                                               getattr(module, "adversary", None)] if m is not None]
        key = fingerprint(*(p.detach().cpu().numpy() for m in parts
                            for p in m.state_dict().values()))
        same = self._fit_reps is not None and self._fit_reps[0] == key
        # every rank extracts and gathers, or none does: under DDP a tested checkpoint gives
        # the other ranks rank 0's BatchNorm statistics, so their weights may have changed
        if all(gather_objects(same)):
            return self._fit_reps[1], True
        fit = extract_representations(module, self.dm.eval_dataloader(self.cfg.fit_split),
                                      self.cfg.max_clips)
        self._fit_reps = (key, fit)
        return fit, False

    def _audit(self, trainer: L.Trainer, module, eval_split: str, prefix: str) -> None:
        t0 = time.time()
        fit, reused = self._fit_representations(module)
        self.fit_reps_reused[prefix] = reused
        ev = extract_representations(module, self.dm.eval_dataloader(eval_split),
                                     self.cfg.max_clips)
        if trainer.is_global_zero:
            from fair_lightning.models import REPRESENTATIONS

            ev, dropped = identity_disjoint(fit, ev)
            if dropped:
                log.warning("%s audit: %d people of %s are also in %s (official splits); their "
                            "clips are left out so attackers meet only unseen people", prefix,
                            dropped, eval_split, self.cfg.fit_split)
            layers = [name for name in REPRESENTATIONS
                      if name in fit and name in self.cfg.layers]
            device = str(module.device) if self.cfg.get("device", "auto") == "auto" else \
                self.cfg.device
            rows = self.audit.run(fit, ev, layers, prefix, device)
            self.results[prefix] = rows
            self.timings[prefix] = time.time() - t0
            metrics = rows_to_metrics(rows, prefix)
            metrics.update({f"{leak_prefix(prefix)}/skipped/{a}": 1.0 for a in self.audit.skipped})
            metrics.update({f"{leak_prefix(prefix)}/refused/{la}": 1.0 for la in self.audit.refused})
            self.skipped[prefix] = dict(self.audit.skipped)
            self.refused[prefix] = dict(self.audit.refused)
            self.shared_dropped[prefix] = dropped
            metrics[f"{prefix}/shared_people_dropped"] = float(dropped)
            if prefix == "probe" and "proxy" in ev:
                self._proxy_audit(fit, ev, Path(trainer.default_root_dir), eval_split)
                metrics.update(self.proxy)
            metrics[audit_time_key(prefix)] = self.timings[prefix]
            log_to_loggers(trainer, metrics)
            self._log_table_and_plot(trainer, rows, prefix)
            log.info("%s audit (%s -> %s): %.1fs", prefix, self.cfg.fit_split, eval_split,
                     self.timings[prefix])
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def _proxy_audit(self, fit: dict, ev: dict, run_dir: Path, eval_split: str) -> None:
        """What the proxy singles out (retrieval) and its share of the task (read-outs);
        `proxy.csv` keeps each audited clip's proxy so other ground truth can be joined."""
        from fair_lightning.audit.proxy_audit import (
            proxy_figures,
            proxy_line,
            readout_figures,
            readout_line,
            write_proxy_csv,
        )

        self.proxy = proxy_figures(ev["proxy"], ev["setting"], ev["identity"])
        (log.warning if self.proxy["proxy/setting_explains"] else log.info)(
            proxy_line(self.proxy))
        self.proxy.update(readout_figures(fit, ev))
        (log.warning if self.proxy.get("proxy/explains_merit") else log.info)(
            readout_line(self.proxy))
        write_proxy_csv(run_dir / "proxy.csv", {self.cfg.fit_split: fit, eval_split: ev})

    def _log_table_and_plot(self, trainer, rows, prefix):
        from fair_lightning.audit.plots import plot_probe_results

        run_dir = Path(trainer.default_root_dir)
        (run_dir / "plots").mkdir(parents=True, exist_ok=True)
        path = plot_probe_results(rows, run_dir / "plots" / f"{prefix}_leakage.png",
                                  title=f"leakage: attacker suite ({prefix})")
        if prefix == "probe":
            self.plot_path = path
        cols = ["layer", "attr", "attacker", "level", "selected", "params", "cv_bal_acc",
                "bal_acc", "bal_acc_ci_low", "bal_acc_ci_high", "chance", "majority_rate",
                "macro_f1", "roc_auc", "n_fit", "n_eval"]
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_table(key=f"{prefix}/table", columns=cols,
                             data=[[r[c] for c in cols] for r in rows])
                lg.log_image(key=f"{prefix}/leakage_plot", images=[str(path)])

    def on_validation_epoch_end(self, trainer, pl_module):
        n = self.cfg.every_n_epochs
        if trainer.sanity_checking or n <= 0 or (trainer.current_epoch + 1) % n:
            return
        self._audit(trainer, pl_module, "val", "val_probe")

    def on_train_end(self, trainer, pl_module):
        self._audit(trainer, pl_module, "val", "fit_probe")
        self.fit_audited = True  # on every rank (results live on rank 0 only)

    def ensure_fit_audit(self, trainer, pl_module) -> None:
        """The end-of-fit audit, when fit ran no training (a run resumed from its final
        checkpoint: Lightning then skips the fit loop and its end)."""
        if not self.fit_audited:
            self._audit(trainer, pl_module, "val", "fit_probe")
            self.fit_audited = True

    def on_test_end(self, trainer, pl_module):
        self._audit(trainer, pl_module, self.cfg.eval_split, "probe")

    def summary(self) -> dict[str, float | str]:
        """The test audit (every attacker, the selected leakage and its attacker's name), the
        end-of-fit audit's selected leakage on val (`fit_leak/`), and how the audit ran."""
        out: dict[str, float | str] = {}
        for prefix, keep in (("probe", None), ("fit_probe", "fit_leak/")):
            rows = self.results.get(prefix)
            if rows:
                m = rows_to_metrics(rows, prefix)
                out.update({k: v for k, v in m.items() if keep is None or k.startswith(keep)})
                out.update(selected_attackers(rows, prefix))
        if "probe" in self.results:
            out.update({audit_time_key(p): t for p, t in self.timings.items()})
            out["probe/suites_reused"] = self.audit.reused
            out["probe/suites_shared"] = self.audit.shared
            out["probe/workers"] = self.audit.pool_size
            out["probe/fit_representations_reused"] = float(
                self.fit_reps_reused.get("probe", False))
            out["probe/shared_people_dropped"] = self.shared_dropped.get("probe", 0)
            out.update(self.proxy)
            out.update({f"leak/skipped/{a}": 1.0 for a in self.skipped.get("probe", {})})
            out.update({f"leak/refused/{la}": 1.0 for la in self.refused.get("probe", {})})
        return out
