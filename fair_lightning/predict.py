"""Scoring clips with a trained checkpoint (`fair-predict`, `make predict`).

The model is the checkpoint's own, erasure stage and refitted head included; the features
are made with the run's own preprocessing settings (read from the config the checkpoint
carries) and cached as training caches them; the invite decision is the run's own rule
(the cut-off its test split used, or `fairness.threshold`), never a quantile of the new
file. Out: a CSV (clip, person, score, invite) and a JSON sidecar (the checkpoint's hash,
the data, the skipped clips, the rule, the timing), both written whole or not at all.

Data: the run's own source and split (no `data`), a manifest CSV (clip, person,
transcript; a label or attribute column is never read) or a ChaLearn folder.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightning as L
import torch

from fair_lightning.config import ConfigError, flat_config

log = logging.getLogger("fair_lightning")

# what the model's inputs are made with: scoring with other settings feeds it other features
FEATURE_KEYS = ("data.text_model", "data.speaker_norm", "data.preprocess.max_sentences",
                "data.preprocess.detector", "data.preprocess.video_frames",
                "data.preprocess.num_faces", "data.preprocess.image_size",
                "data.preprocess.face_margin", "data.preprocess.max_audio_seconds",
                "data.preprocess.face_embedding")
SPLIT_CHOICES = ("train", "val", "test", "all")


@dataclass
class ScoringData:
    """What is scored: a loader of (batch, people), how many clips, and what was skipped."""

    loader: object
    clips: int
    description: dict
    skipped: list[dict] = field(default_factory=list)


class ScoringRecords(torch.utils.data.Dataset):
    """Preprocessed clips of a raw source, read one by one from its store."""

    def __init__(self, entries, store, transform=None):
        self.entries, self.store, self.transform = entries, store, transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        from data_modules.preprocess import load_record
        from data_modules.schema import check_record

        record = load_record(self.entries[i], self.store)
        check_record(record, f"preprocessed clip {self.entries[i].clip_id!r}")
        return self.transform(record) if self.transform else record


def collate_with_people(records) -> tuple:
    """The model's batch, without any sensitive attribute (scoring never reads one), and
    the clips' people by name (the batch holds them as codes)."""
    from data_modules.collate import collate_records, strip_sensitive

    return collate_records([strip_sensitive(r) for r in records]), [r["identity"] for r in records]


def feature_changes(saved_cfg, cfg) -> list[str]:
    """The feature settings an override changed from the run's."""
    before, now = flat_config(saved_cfg), flat_config(cfg)
    return [f"{k}={now.get(k)!r} (the model's: {before.get(k)!r})" for k in FEATURE_KEYS
            if before.get(k) != now.get(k)]


def run_data(cfg, split: str) -> ScoringData:
    """The run's own source (its cached shards), one split, read as testing reads it."""
    from fair_lightning.experiment import build_datamodule

    if split == "all":
        raise ConfigError("split=all scores a manifest or a ChaLearn folder; the run's own "
                          "data is scored one split at a time (split=train, val or test)")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    loader = dm.eval_dataloader(split, sensitive=False, collate_fn=collate_with_people)
    return ScoringData(loader, len(loader.dataset), {
        "source": cfg.data.source, "cache": dm.cache_name, "split": split})


def raw_data(cfg, data: Path, split: str) -> ScoringData:
    """A manifest CSV or a ChaLearn folder, preprocessed with the run's settings (cached in
    the run's data.cache_dir, as training caches), the unreadable clips counted."""
    from omegaconf import OmegaConf

    from data_modules.datamodule import SpeakerNorm, speaker_stats
    from data_modules.errors import CorpusError
    from data_modules.preprocess import load_record, preprocess
    from data_modules.sources.chalearn import ChalearnSource
    from data_modules.sources.manifest import ManifestSource

    data_cfg = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))  # writable
    if data.is_dir():
        data_cfg.chalearn.root = str(data)
        source = ChalearnSource(data_cfg)
    elif data.is_file():
        data_cfg.manifest.path = str(data)
        source = ManifestSource(data_cfg, scoring=True)
    else:
        raise ConfigError(f"data={data}: no such file or folder (a manifest CSV or a ChaLearn "
                          "folder)")
    entries, skipped = source.scanned()
    if split != "all":
        entries = source.assign_splits(entries)[split]
    store = source.store()
    usable, report = preprocess(
        entries, skipped, store=store, settings=source.settings(),
        text_model=cfg.data.text_model, max_sentences=cfg.data.preprocess.max_sentences,
        workers=cfg.data.preprocess.workers or os.cpu_count() or 1, source=source.name,
        corpus=str(data))
    skips = [{"clip_id": s.clip_id, "reason": s.reason, "detail": s.detail}
             for s in _skips(store)]
    if not usable:
        raise CorpusError(f"{data}: none of the {len(entries) + len(skipped)} clips could be "
                          f"read ({_reasons(skips)}; every one: {store.root / 'skipped.csv'})")
    transform = None
    if cfg.data.speaker_norm == "person":
        transform = SpeakerNorm(speaker_stats(load_record(e, store) for e in usable))
    loader = torch.utils.data.DataLoader(
        ScoringRecords(usable, store, transform), batch_size=cfg.data.batch_size,
        shuffle=False, num_workers=cfg.data.num_workers, collate_fn=collate_with_people)
    return ScoringData(loader, len(usable), {
        "source": source.name, "path": str(data.resolve()), "split": split,
        "listed": report.clips_listed, "preprocess_report": str(store.root / "report.md")},
        skips)


def _skips(store) -> list:
    import csv

    from data_modules.preprocess import Skipped

    with open(store.root / "skipped.csv", encoding="utf-8") as f:
        return [Skipped(r["clip_id"], r["reason"], r["detail"]) for r in csv.DictReader(f)]


def _reasons(skips: list[dict]) -> str:
    counts = sorted(_reason_counts(skips).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{n} {reason}" for reason, n in counts) or "none listed"


def check_features(data: ScoringData, module, cfg, where: str, model_source: str) -> None:
    """The first batch's features against what the model reads: an error naming the field."""
    batch, _ = next(iter(data.loader))
    hp = module.hparams
    for name, have, want in (("text", batch.text.shape[-1], hp["text_dim"]),
                             ("audio", batch.audio.shape[-1], hp["audio_dim"])):
        if have != want:
            raise ConfigError(
                f"{where}: the clips' {name} features are {have}-d, the model reads {want}-d "
                f"(trained with data.text_model={cfg.data.text_model!r} and its audio "
                "features): score data made as the run's was")
    size = (cfg.data.synthetic.image_size if model_source == "synthetic"
            else cfg.data.preprocess.image_size)
    if tuple(batch.faces.shape[-2:]) != (size, size):
        raise ConfigError(
            f"{where}: the clips' face crops are {tuple(batch.faces.shape[-2:])} pixels, the "
            f"model was trained on {size} x {size} ({model_source} data)")
    if cfg.model.face_encoder == "pretrained" and batch.face_embedding is None:
        raise ConfigError(f"{where}: the clips carry no face descriptor, and the model's face "
                          "proxy reads one (data.preprocess.face_embedding=dlib)")


def invite_rule(cfg, saved: dict, ckpt: Path, threshold: str | None = None) -> dict:
    """The invite rule: `threshold` where given; else the run's own: `fairness.threshold`
    where it set one, else the cut-off written into the checkpoint when it was tested, else
    (an older checkpoint) the cut-off its run's test predictions give under `fairness.top_q`."""
    import csv

    from fair_lightning.audit.fairness import top_q_cutoff
    from fair_lightning.lightning.checkpoint import DECISION_KEY, decision_of, run_dir_near

    if threshold is not None:
        try:
            cut = float(threshold)
        except ValueError:
            raise ConfigError(f"threshold={threshold!r} is not a number") from None
        return {"cutoff": cut, "rule": "a fixed score threshold", "from": "threshold= given"}
    if cfg.fairness.threshold is not None:
        return decision_of(cfg, None, "fairness.threshold")
    if DECISION_KEY in saved:
        return dict(saved[DECISION_KEY])
    run = run_dir_near(ckpt)
    preds = run / "predictions.csv" if run else None
    if preds is None or not preds.is_file():
        raise ConfigError(f"{ckpt}: no invite cut-off is known (the checkpoint was written "
                          "before checkpoints kept it, and no predictions.csv of its run lies "
                          "above it): set fairness.threshold=<score>")
    with open(preds, encoding="utf-8") as f:
        scores = [float(r["score"]) for r in csv.DictReader(f)]
    return decision_of(cfg, top_q_cutoff(scores, cfg.fairness.top_q),
                       f"the test split of {run} ({preds.name})")


class ScoringProgress(L.Callback):
    """A progress line every tenth of the clips (a bar on a terminal)."""

    def __init__(self, total: int):
        self.total = total

    def on_predict_start(self, trainer, pl_module):
        from data_modules.progress import Progress

        self.bar = Progress(self.total, "scoring", unit="clips", logger=log)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                             dataloader_idx=0):
        self.bar.update(len(outputs["clip_id"]))

    def on_predict_end(self, trainer, pl_module):
        self.bar.close()


def output_path(out: str | None, ckpt: Path) -> Path:
    from fair_lightning.experiment import home_of

    path = Path(out) if out else (home_of(ckpt) / f"scores-{datetime.now():%Y%m%d-%H%M%S}.csv")
    if path.suffix != ".csv":
        raise ConfigError(f"out={path}: the scores are a CSV file (name it *.csv)")
    for p in (path, path.with_suffix(".json")):
        if p.exists():
            raise ConfigError(f"out={path}: {p} exists; choose another out or remove it")
    return path


def scoring_model(ckpt: Path, overrides: list[tuple[str, str]]):
    """(the checkpoint's dict, its config with the overrides, the run's own config, where
    the config was read, the model as tested); a setting that would score other features,
    another erasure stage or a GPU not here is a ConfigError."""
    from omegaconf import OmegaConf

    from fair_lightning.experiment import check_config_matches, load_checkpoint, with_erasure
    from fair_lightning.lightning.checkpoint import checkpoint_config, read_checkpoint

    saved = read_checkpoint(ckpt)
    cfg, cfg_from = checkpoint_config(ckpt, overrides, saved)
    model_cfg, _ = checkpoint_config(ckpt, None, saved)
    changed = feature_changes(OmegaConf.to_container(model_cfg, resolve=True),
                              OmegaConf.to_container(cfg, resolve=True))
    if changed:
        raise ConfigError(f"{ckpt}: the model reads features made as its run made them; "
                          f"this asks for {', '.join(changed)}")
    module = load_checkpoint(ckpt)
    check_config_matches(module, cfg, ckpt)
    if with_erasure(module, cfg)[0] is not module:
        raise ConfigError(f"{ckpt}: erasure.* differ from the checkpoint's; scoring uses the "
                          "model as it was tested: fit another erasure stage with fair-audit "
                          "and score its erased.ckpt")
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{ckpt}: its run used trainer.accelerator={cfg.trainer.accelerator} "
                          "and no GPU is visible here: add trainer.accelerator=cpu (or auto)")
    return saved, cfg, model_cfg, cfg_from, module


def scores_csv(rows: list[tuple[str, str, float]], cutoff: float) -> tuple[str, int]:
    """The CSV text (sorted by clip) and how many are invited: a score as written (6
    decimals) at or above the cut-off as written."""
    import csv
    import io

    cut = round(cutoff, 6)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["clip_id", "person", "score", "invite"])
    invited = 0
    for c, p, s in rows:
        invite = int(round(s, 6) >= cut)
        invited += invite
        w.writerow([c, p, f"{s:.6f}", invite])
    return buf.getvalue(), invited


def predict(ckpt: Path, data: str | None, split: str | None, out: str | None,
            overrides: list[tuple[str, str]], threshold: str | None = None) -> Path:
    """Score the clips of `data` (None: the run's own data) with `ckpt`; returns the CSV."""
    from data_modules.files import atomic_write, file_sha256, json_text
    from fair_lightning.experiment import build_predict_trainer, code_version

    ckpt = Path(ckpt)
    saved, cfg, model_cfg, cfg_from, module = scoring_model(ckpt, overrides)
    split = split or ("test" if data is None or Path(data).is_dir() else "all")
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"split={split!r}: one of {', '.join(SPLIT_CHOICES)}")
    path = output_path(out, ckpt)
    rule = invite_rule(cfg, saved, ckpt, threshold)
    t0 = time.time()
    scoring = run_data(cfg, split) if data is None else raw_data(cfg, Path(data), split)
    check_features(scoring, module, cfg, str(data or cfg.data.source), model_cfg.data.source)
    if data is not None and model_cfg.data.source == "synthetic":
        log.warning("the model was trained on synthetic data; scores of real clips say little")
    data_s = time.time() - t0
    trainer = build_predict_trainer(cfg, path.parent, [ScoringProgress(scoring.clips)])
    t1 = time.time()
    parts = trainer.predict(module, dataloaders=scoring.loader, return_predictions=True)
    scoring_s = time.time() - t1
    rows = sorted((c, p, s) for part in parts for c, p, s in
                  zip(part["clip_id"], part["person"], part["score"].tolist(), strict=True))
    if len({c for c, _, _ in rows}) != len(rows) or len(rows) != scoring.clips:
        raise RuntimeError(f"scored {len(rows)} rows for {scoring.clips} clips")
    text, invited = scores_csv(rows, rule["cutoff"])
    sidecar = {
        "checkpoint": str(ckpt.resolve()), "checkpoint_sha256": file_sha256(ckpt),
        "config_from": cfg_from, "code": code_version(),
        "data": {**scoring.description, "scored": len(rows), "skipped": len(scoring.skipped),
                 "skipped_by_reason": _reason_counts(scoring.skipped),
                 "skipped_clips": scoring.skipped},
        "decision": {**rule, "invited": invited, "invited_share": invited / len(rows)},
        "device": str(trainer.strategy.root_device), "precision": str(cfg.trainer.precision),
        "batch_size": int(cfg.data.batch_size),
        "seconds": {"data": round(data_s, 3), "scoring": round(scoring_s, 3)},
        "clips_per_s": round(len(rows) / max(scoring_s, 1e-9), 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.with_suffix(".json"), json_text(sidecar))
    atomic_write(path, text)
    log.info("scored %d clips (%d skipped) in %.1fs, %.0f clips/s; %d invited at score >= %.6f "
             "(%s)", len(rows), len(scoring.skipped), scoring_s, sidecar["clips_per_s"],
             invited, rule["cutoff"], rule["rule"])
    return path


def _reason_counts(skips: list[dict]) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(s["reason"] for s in skips))
