"""Audit callbacks: post-hoc sensitive-attribute probes and output-fairness metrics.

Both read gender/ethnicity through their own path (the datamodule's `eval_dataloader`, or
the val/test batches), never through the training step. They log aggregates only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from data_modules.progress import Progress
from data_modules.schema import SENSITIVE
from fair_lightning.audit.fairness import OutputFairness, top_q_cutoff
from fair_lightning.audit.probes import AttackerResult, AttackSuite, one_thread
from fair_lightning.models.adversaries import one_hot_attributes
from fair_lightning.models.proxy import partner_statistics
from fair_lightning.ops.runtime import gather_objects

log = logging.getLogger(__name__)
ATTRIBUTES = SENSITIVE  # attribute -> number of groups


def _rows(m: OutputFairness) -> tuple[np.ndarray, np.ndarray]:
    """Scores and groups accumulated by a fairness metric, from every rank."""
    from torchmetrics.utilities import dim_zero_cat

    with m.sync_context(should_sync=dist.is_available() and dist.is_initialized()):
        return (dim_zero_cat(m.scores).cpu().numpy(), dim_zero_cat(m.groups).cpu().numpy())


def _log_to_loggers(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    # self.log is not allowed in on_train_end / on_test_end: talk to the loggers directly
    # in batches trained, as the steps of Lightning's own logging
    step = trainer.lightning_module.trained_batches
    for lg in trainer.loggers:
        lg.log_metrics(metrics, step=step)
        if hasattr(lg, "save"):
            lg.save()


@torch.no_grad()
def collect_rows(module, loader, rows, max_clips: int = 0) -> dict[str, np.ndarray]:
    """`rows(batch)` -> {name: array [B, ...]} over every clip of a loader, in eval mode
    without gradients; under DDP every rank collects its shard and the result is gathered
    (identical on every rank), de-duplicated by clip id and sorted. Outside autocast: what
    the proxy fits, the erasure stage and the audit read is computed in float32 whatever
    the trainer's precision."""
    was_training = module.training
    module.eval()
    chunks: dict[str, list] = {}
    try:
        with torch.autocast(module.device.type, enabled=False):
            _collect(module, loader, rows, chunks, max_clips)
    finally:
        module.train(was_training)
    local = {k: np.concatenate(v) for k, v in chunks.items()}
    parts = [p for p in gather_objects(local) if p]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(merged["clip_id"], return_index=True)  # DDP may pad with repeats
    merged = {k: v[first] for k, v in merged.items()}
    if max_clips:
        merged = {k: v[:max_clips] for k, v in merged.items()}
    return merged


def _collect(module, loader, rows, chunks: dict, max_clips: int) -> None:
    seen = 0
    for batch in loader:
        batch = batch.to(module.device)
        for name, r in rows(batch).items():
            chunks.setdefault(name, []).append(r)
        chunks.setdefault("identity", []).append(batch.identity.cpu().numpy())
        chunks.setdefault("clip_id", []).append(np.array(batch.clip_id))
        seen += len(batch)
        if max_clips and seen >= max_clips:
            break


def extract_representations(module, loader, max_clips: int = 0) -> dict[str, np.ndarray]:
    """Named representations, attributes and identities of every clip of a loader."""
    from fair_lightning.audit.proxy_audit import setting_descriptor

    def rows(batch):
        out = {name: r.float().cpu().numpy() for name, r in module.representations(batch).items()}
        if "proxy" in out:  # the setting-only view the proxy's retrieval is compared with
            out["setting"] = setting_descriptor(batch.faces.cpu().numpy())
        out["label"] = batch.label.float().cpu().numpy()  # the proxy's share of the task
        out["merit"] = batch.merit.float().cpu().numpy()
        s = batch.sensitive
        out["gender"] = s.gender.cpu().numpy()
        out["ethnicity"] = s.ethnicity.cpu().numpy()
        return out

    return collect_rows(module, loader, rows, max_clips)


class ProxyComponentsFit(L.Callback):
    """At the start of fit, before any step: fit the face adversary's proxy components
    (`models.proxy.ProxyComponents`) on the training split's face embeddings, read without
    sensitive attributes. A resumed run's components come from its checkpoint and are kept."""

    def __init__(self, datamodule):
        self.dm = datamodule
        self.metrics: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module):
        comp = pl_module.adversary.components
        if comp.fitted:
            return
        def rows(b):
            out = {"face": pl_module.adversary.encoder_embed(b).float().cpu().numpy()}
            out.update({name: x.numpy() for name, x in
                        partner_statistics(b, comp.partners).items()})
            return out

        emb = collect_rows(pl_module, self.dm.eval_dataloader("train", sensitive=False), rows)
        self.metrics = comp.fit(torch.from_numpy(emb["face"]), torch.from_numpy(emb["identity"]),
                                {p: torch.from_numpy(emb[p]) for p in comp.partners})
        if lead := comp.variance_shares():
            log.info("face proxy: %d leading directions across people hold %.0f%% of the "
                     "between-person variance (%s)", comp.k, 100 * sum(lead),
                     ", ".join(f"{100 * e:.0f}%" for e in lead))
        if corr := comp.canonical_correlations():
            log.info("face proxy: %d canonical directions shared by face and %s across "
                     "people, correlations %s", comp.k, " and ".join(comp.partners),
                     ", ".join(f"{c:.2f}" for c in corr))


ERASURE_KEY = "erasure_stage"  # the stage's figures, in the checkpoint it wrote


class ErasureStage(L.Callback):
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

    def ensure_fitted(self, trainer, pl_module) -> None:
        """For a run resumed after its last epoch whose checkpoint predates the stage."""
        if not pl_module.erased_head.fitted:
            self.fit(trainer, pl_module)
        elif not self.metrics:  # fitted by the run that was killed: its figures are saved
            saved = torch.load(self.last_ckpt, map_location="cpu", weights_only=True)
            self.metrics = dict(saved.get(ERASURE_KEY, {}))
            if trainer.is_global_zero and self.metrics:  # the resumed log cut them back
                _log_to_loggers(trainer, self.metrics)

    def fit(self, trainer, module) -> None:
        self.fit_head(module)
        if trainer.is_global_zero:
            self._write_into_last(module)
            _log_to_loggers(trainer, self.metrics)
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
            self.metrics[f"erase/val_pearson_{name}"] = _pearson(score, val["label"])
            if np.isfinite(val["merit"]).all():
                self.metrics[f"erase/val_pearson_merit_{name}"] = _pearson(score, val["merit"])
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


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def identity_disjoint(fit: dict, ev: dict) -> tuple[dict, int]:
    """`ev` without the clips of people who are also in `fit` (ChaLearn's official splits
    share people), and how many people that removed."""
    shared = np.isin(ev["identity"], fit["identity"])
    if not shared.any():
        return ev, 0
    people = int(np.unique(ev["identity"][shared]).size)
    return {k: v[~shared] for k, v in ev.items()}, people


def fingerprint(*arrays: np.ndarray) -> str:
    """A digest of numeric arrays' bytes: equal digests mean the same representations."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


ROUND_OFF_SPREAD = 1e-6  # a representation's spread under this share of its scale: constant


def relative_spread(x: np.ndarray) -> float:
    """sqrt(total variance) / root-mean-square of the values: ~1e-16 for a representation
    erased to round-off, 0 for an exactly constant one."""
    x = np.asarray(x, dtype=np.float64)
    scale = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    spread = float(np.sqrt(np.var(x, axis=0).sum())) if len(x) > 1 else 0.0
    return spread / scale if scale > 0 else 0.0


def unauditable(fit_y, ev_y, ev_person) -> str | None:
    """Why an attribute cannot be attacked on these splits (None when it can): an attacker
    needs two known groups on the fit side and known clips of two people on the eval side
    (a corpus may annotate an attribute for a few people only)."""
    fit_y, ev_y = np.asarray(fit_y), np.asarray(ev_y)
    groups = np.unique(fit_y[fit_y >= 0])
    if groups.size < 2:
        return (f"the fit split has {groups.size} known group(s) "
                f"({int((fit_y >= 0).sum())} of {fit_y.size} clips annotated)")
    if np.unique(np.asarray(ev_person)[ev_y >= 0]).size < 2:
        return (f"the scored split has known values for fewer than 2 people "
                f"({int((ev_y >= 0).sum())} of {ev_y.size} clips annotated)")
    return None


class AttackAudit:
    """The attacker suite over every layer x attribute, remembering fitted suites.

    Fitting (grouped cross-validation of every family) depends on the fit split alone, so a
    suite fitted at the end of fit is reused at test when the fit split's representations
    are byte-identical (the tested checkpoint is the final one); otherwise it is refitted.
    """

    def __init__(self, cfg, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self._suites: dict[str, AttackSuite] = {}  # fingerprint of (rows, attribute, people)
        self.reused = 0  # suites served by an earlier audit's fit
        self.shared = 0  # suites of this audit served by another layer's identical rows
        self.pool_size = 0  # workers of the last audit that fitted a suite

    def run(self, fit: dict, ev: dict, layers, name: str = "probe", device: str = "cpu"
            ) -> list[dict]:
        rows = []
        self.skipped = {a: why for a in ATTRIBUTES
                        if (why := unauditable(fit[a], ev[a], ev["identity"]))}
        for attr, why in self.skipped.items():
            log.warning("audit: %s is not scored: %s", attr, why)
        # a standardising attacker would rescale round-off into a number: refused instead
        self.refused = {layer: spread for layer in layers
                        if (spread := relative_spread(fit[layer])) <= ROUND_OFF_SPREAD}
        for layer, spread in self.refused.items():
            log.warning("audit: layer %s is not scored: it is constant up to round-off "
                        "(spread %.1e of its scale), so there is nothing left to read and an "
                        "attacker would only read rescaled round-off", layer, spread)
        todo = [(layer, attr, k) for layer in layers if layer not in self.refused
                for attr, k in ATTRIBUTES.items() if attr not in self.skipped]
        suites = self._fit_suites(fit, todo, name, device)
        # Lightning tests under inference mode; the MLP attackers need autograd
        with torch.inference_mode(False), torch.enable_grad():
            for layer, attr, _ in todo:
                res = suites[(layer, attr)].evaluate(
                    ev[layer], ev[attr], ev["identity"], bootstrap=self.cfg.bootstrap)
                chosen = {id(r): lvl for lvl, r in res.leak.items()}
                for r in res.attackers:
                    rows.append({"layer": layer, "attr": attr, "attacker": r.attacker,
                                 "level": r.level, "params": r.params,
                                 "selected": id(r) in chosen, **r.as_dict()})
        return rows

    def workers(self) -> int:
        """Suites fitted at once: `probe.workers`, or (0) the run's torch threads; each
        worker computes on one thread, so the audit uses the cores the run was given."""
        n = int(self.cfg.get("workers", 0) or 0)
        return n if n > 0 else max(1, torch.get_num_threads())

    def _fit_suites(self, fit: dict, todo, name: str, device: str) -> dict:
        """A fitted suite per (layer, attribute). Fitting depends on the fit rows alone, so
        rows seen before (an earlier audit of the same weights, or another layer with the
        same bytes, e.g. `erased` when the erasure stage erased nothing) are fitted once;
        the others are fitted `workers()` at a time."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        # the class count too: two attributes may hold the same bytes
        keys = {(layer, attr): fingerprint(fit[layer], fit[attr], fit["identity"],
                                           np.asarray([k]))
                for layer, attr, k in todo}
        new: dict[str, tuple] = {}
        for layer, attr, k in todo:
            key = keys[(layer, attr)]
            if key in self._suites:
                self.reused += 1
            elif key in new:
                self.shared += 1
            else:
                new[key] = (layer, attr, k)

        def fit_one(layer, attr, k):
            return AttackSuite(k, families=tuple(self.cfg.attackers),
                               person_level=self.cfg.person_level, cv_folds=self.cfg.cv_folds,
                               seed=self.seed, device=device).fit(
                fit[layer], fit[attr], fit["identity"])

        fitted = {}
        if new:
            # read before `one_thread` below sets the process's count to 1
            self.pool_size = min(self.workers(), len(new))
            # BLAS and torch at one thread for the whole pool: each suite's own `one_thread`
            # then saves and restores 1, whichever worker leaves first
            # and in each worker: OpenMP keeps a thread count per thread, and a new thread
            # would otherwise start a team of every core inside each suite
            with (one_thread(), ThreadPoolExecutor(self.pool_size,
                                                   initializer=torch.set_num_threads,
                                                   initargs=(1,)) as pool,
                  Progress(len(new), f"{name} audit", unit="suites", logger=log) as bar):
                jobs = {pool.submit(fit_one, *job): key for key, job in new.items()}
                for done in as_completed(jobs):
                    fitted[jobs[done]] = done.result()
                    layer, attr, _ = new[jobs[done]]
                    bar.update(note=f"{layer}/{attr}")
        # keep the suites of these weights only: earlier epochs' would pile up
        self._suites = {key: self._suites.get(key) or fitted[key] for key in keys.values()}
        return {la: self._suites[key] for la, key in keys.items()}


def audit_time_key(prefix: str) -> str:
    """`probe` -> `time/probe_audit_s`: the wall time of one audit (extraction included)."""
    return f"time/{prefix}_audit_s"


def leak_prefix(prefix: str) -> str:
    """`probe` -> `leak`, `fit_probe` -> `fit_leak`, `val_probe` -> `val_leak`."""
    return prefix.replace("probe", "leak")


LEAK_KEYS = ("bal_acc", "bal_acc_ci_low", "bal_acc_ci_high", "cv_bal_acc", "chance",
             "n_eval")


def rows_to_metrics(rows: list[dict], prefix: str) -> dict[str, float]:
    """Every attacker: `<prefix>/<layer>/<attr>/<attacker>/<field>`; the selected attacker
    at each level: `<leak prefix>/<layer>/<attr>/<clip|person>/<field>`."""
    out = {f"{prefix}/{r['layer']}/{r['attr']}/{r['attacker']}/{k}": r[k]
           for r in rows for k in AttackerResult.NUMERIC}
    out.update({f"{leak_prefix(prefix)}/{r['layer']}/{r['attr']}/{r['level']}/{k}": r[k]
                for r in rows if r["selected"] for k in LEAK_KEYS})
    return out


def selected_attackers(rows: list[dict], prefix: str) -> dict[str, str]:
    """`<leak prefix>/<layer>/<attr>/<level>/attacker` -> the attacker's name and params."""
    return {f"{leak_prefix(prefix)}/{r['layer']}/{r['attr']}/{r['level']}/attacker":
            f"{r['attacker']} ({r['params']})" for r in rows if r["selected"]}


class SensitiveAttributeProbe(L.Callback):
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
            _log_to_loggers(trainer, metrics)
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

    def _metric(self, stage, attr, device):
        per = self.metrics.setdefault(stage, {})
        if attr not in per:
            per[attr] = OutputFairness(num_groups=ATTRIBUTES[attr], threshold=self.threshold,
                                       top_q=self.top_q,
                                       min_group_size=self.min_group_size).to(device)
        return per[attr]

    def _update(self, stage, outputs, batch, device):
        s = batch.sensitive
        for attr in ATTRIBUTES:
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
                for g in range(ATTRIBUTES[attr]):  # a suppressed group is not plotted either
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


class TestPredictions(L.Callback):
    """`predictions.csv` in the run directory: clip, person, predicted score and label of
    every test clip (gathered from every rank, each clip once, sorted by clip). No sensitive
    attribute is written: scoring against other ground truth (a benchmark's true merit)
    joins on the clip id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[tuple[str, str, float, float]] = []

    def on_test_epoch_start(self, trainer, pl_module):
        self.rows = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0):
        scores = outputs["score"].detach().float().cpu().tolist()
        labels = batch.label.detach().float().cpu().tolist()
        people = batch.identity.tolist() if torch.is_tensor(batch.identity) else batch.identity
        self.rows += [(str(c), str(p), s, y) for c, p, s, y in
                      zip(batch.clip_id, people, scores, labels, strict=True)]

    def on_test_epoch_end(self, trainer, pl_module):
        rows = {r[0]: r for part in gather_objects(self.rows) for r in part}
        if not trainer.is_global_zero:
            return
        import csv
        import io

        from data_modules.files import atomic_write

        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")  # quotes a clip name holding a comma
        out.writerow(["clip_id", "identity", "score", "label"])
        out.writerows([c, p, f"{s:.6f}", f"{y:.6f}"] for c, p, s, y in
                      (rows[k] for k in sorted(rows)))
        atomic_write(self.path, buf.getvalue())
