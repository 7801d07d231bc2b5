"""The LightningDataModule: has the source's shards built (once), then streams them as typed
batches. It never looks at which source made them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
from omegaconf import DictConfig

from data_modules.collate import collate_records, strip_sensitive
from data_modules.schema import SPLITS
from data_modules.shards import ShardError, check_shard_dir, open_streaming, verify_checksums
from data_modules.sources import build_shards, shard_root

log = logging.getLogger(__name__)

MIN_SPREAD = 1e-3  # a feature constant for a speaker is centred, not blown up


class SpeakerNorm:
    """Record transform for `data.speaker_norm: person`: each audio feature standardised by
    the candidate's own mean and spread over their clips, so the between-speaker level of
    the voice (pitch, timbre averages) is gone and what varies within a speaker stays. A
    candidate answers several questions, so this needs no label, at training and at
    inference alike."""

    def __init__(self, stats: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.stats = stats

    def __call__(self, record: dict) -> dict:
        mean, std = self.stats[record["identity"]]
        audio = (np.asarray(record["audio"], np.float64) - mean) / np.maximum(std, MIN_SPREAD)
        return {**record, "audio": audio.astype(np.float16)}


def speaker_stats(records) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """identity -> (mean, std) of each audio feature over all frames of the person's clips
    among `records` (training, testing and scoring alike: no label is read)."""
    acc: dict[str, list] = {}
    for r in records:
        a = np.asarray(r["audio"], dtype=np.float64)
        n, s, q = acc.setdefault(r["identity"], [0, 0.0, 0.0])
        acc[r["identity"]] = [n + len(a), s + a.sum(0), q + (a * a).sum(0)]
    return {p: (s / n, np.sqrt(np.maximum(q / n - (s / n) ** 2, 0.0)))
            for p, (n, s, q) in acc.items() if n > 0}


class Chain:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, record: dict) -> dict:
        for step in self.steps:
            record = step(record)
        return record


class InterviewDataModule(L.LightningDataModule):
    """Streams one shard directory per split.

    label_free=True: the *training* loader strips gender and ethnicity from every record
    before collation, so the training step cannot read them (`Batch.sensitive` raises).
    Probes and fairness metrics use `eval_dataloader(split)`, which keeps them.
    """

    def __init__(self, data_cfg: DictConfig, *, seed: int = 0, label_free: bool = False,
                 shard_root: str | Path | None = None):
        super().__init__()
        self.cfg = data_cfg
        self.seed = seed
        self.label_free = label_free
        self.shard_root = Path(shard_root) if shard_root else None
        self.datasets: dict[str, object] = {}
        self.verified = False
        self.verify_seconds = 0.0
        self._speaker_stats: dict[str, dict] = {}

    # -- building -----------------------------------------------------------------------
    def prepare_data(self) -> None:  # local rank 0 only
        if self.shard_root is None:
            self.shard_root = build_shards(self.cfg)

    def _root(self) -> Path:
        if self.shard_root is None:  # another rank built them; a raw source scans once here
            self.shard_root = shard_root(self.cfg)
        return self.shard_root

    def split_dir(self, split: str) -> Path:
        return self._root() / split

    @property
    def cache_name(self) -> str:
        """The data's cache folder name, `<source>-<key>`: runs with one name read the same
        clips (it keys what runs derive from the data, and W&B's `data.cache_key`)."""
        return self._root().name

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            check_shard_dir(self.split_dir(split))
        if not self.verified:  # once per process: hashing is cheap next to training, not free
            t = time.perf_counter()
            chunks = size = 0
            for split in SPLITS:
                n, b = verify_checksums(self.split_dir(split))
                chunks, size = chunks + n, size + b
            self.verify_seconds = time.perf_counter() - t
            self.verified = True
            log.info("data: %d chunks (%.0f MB) match their checksums (%.2f s)", chunks,
                     size / 1e6, self.verify_seconds)

    def feature_dims(self) -> dict[str, int]:
        """Feature sizes of this source (read from the first training record)."""
        first = open_streaming(self.split_dir("train"), shuffle=False, seed=0)[0]
        return {"text": int(first["text"].shape[-1]), "audio": int(first["audio"].shape[-1])}

    # -- loaders ------------------------------------------------------------------------
    def speaker_stats(self, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """identity -> (mean, std) of each audio feature over all frames of the person's clips
        in `split` (computed once per split; reads no sensitive attribute)."""
        if split not in self._speaker_stats:
            ds = open_streaming(self.split_dir(split), shuffle=False, seed=0)
            self._speaker_stats[split] = speaker_stats(ds[i] for i in range(len(ds)))
        return self._speaker_stats[split]

    def _transform(self, split: str, keep_sensitive: bool):
        steps = []
        if self.cfg.get("speaker_norm", "none") == "person":
            steps.append(SpeakerNorm(self.speaker_stats(split)))
        if not keep_sensitive:
            steps.append(strip_sensitive)
        if not steps:
            return None
        return steps[0] if len(steps) == 1 else Chain(steps)

    def _loader(self, split: str, *, train: bool, keep_sensitive: bool,
                collate_fn=collate_records):
        from litdata import StreamingDataLoader

        ds = open_streaming(self.split_dir(split), shuffle=train, seed=self.seed,
                            transform=self._transform(split, keep_sensitive),
                            equal_ranks=train)
        return StreamingDataLoader(ds, batch_size=self.cfg.batch_size,
                                   num_workers=self.cfg.num_workers,
                                   collate_fn=collate_fn,
                                   persistent_workers=self.cfg.num_workers > 0)

    def train_dataloader(self):
        return self._loader("train", train=True, keep_sensitive=not self.label_free)

    def val_dataloader(self):
        return self._loader("val", train=False, keep_sensitive=True)

    def test_dataloader(self):
        return self._loader("test", train=False, keep_sensitive=True)

    def eval_dataloader(self, split: str, *, sensitive: bool = True,
                        collate_fn=collate_records):
        """Unshuffled loader, for probes and fairness metrics (with the sensitive
        attributes) or label-free work such as face pretraining and scoring
        (`sensitive=False`; scoring collates the people's names too)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self._loader(split, train=False, keep_sensitive=sensitive,
                            collate_fn=collate_fn)


__all__ = ["InterviewDataModule", "ShardError", "SPLITS"]
