"""The LightningDataModule: has the source's shards built (once), then streams them as typed
batches. It never looks at which source made them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from data_modules.collate import collate_records, strip_sensitive
from data_modules.schema import SPLITS
from data_modules.shards import ShardError, check_shard_dir, open_streaming, verify_checksums
from data_modules.sources import build_shards, shard_root

log = logging.getLogger(__name__)


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
    def _loader(self, split: str, *, train: bool, keep_sensitive: bool):
        from litdata import StreamingDataLoader

        ds = open_streaming(self.split_dir(split), shuffle=train, seed=self.seed,
                            transform=None if keep_sensitive else strip_sensitive,
                            equal_ranks=train)
        return StreamingDataLoader(ds, batch_size=self.cfg.batch_size,
                                   num_workers=self.cfg.num_workers,
                                   collate_fn=collate_records,
                                   persistent_workers=self.cfg.num_workers > 0)

    def train_dataloader(self):
        return self._loader("train", train=True, keep_sensitive=not self.label_free)

    def val_dataloader(self):
        return self._loader("val", train=False, keep_sensitive=True)

    def test_dataloader(self):
        return self._loader("test", train=False, keep_sensitive=True)

    def eval_dataloader(self, split: str, *, sensitive: bool = True):
        """Unshuffled loader, for probes and fairness metrics (with the sensitive
        attributes) or label-free work such as face pretraining (`sensitive=False`)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self._loader(split, train=False, keep_sensitive=sensitive)


__all__ = ["InterviewDataModule", "ShardError", "SPLITS"]
