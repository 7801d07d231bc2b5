"""LightningDataModules: build or find the shards, then stream them as typed batches."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from data_modules.collate import collate_records, strip_sensitive
from data_modules.shards import (
    ShardError,
    atomic_dir,
    check_shard_dir,
    open_streaming,
    write_shards,
)

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
# bump when the generator's output changes for the same config, so caches rebuild
SYNTHETIC_VERSION = 2


def synthetic_cache_key(synthetic_cfg: DictConfig, text_model: str) -> str:
    blob = json.dumps({"cfg": OmegaConf.to_container(synthetic_cfg, resolve=True),
                       "text_model": text_model, "version": SYNTHETIC_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_synthetic_shards(data_cfg: DictConfig) -> Path:
    """Generate the synthetic benchmark once per config; returns the cached directory."""
    cache = Path(data_cfg.cache_dir)
    root = cache / f"synthetic-{synthetic_cache_key(data_cfg.synthetic, data_cfg.text_model)}"
    if (root / "meta.json").is_file():
        return root
    from data_modules.synthetic import generate_synthetic

    log.info("generating synthetic benchmark into %s", root)
    splits = generate_synthetic(data_cfg.synthetic, data_cfg.text_model)
    with atomic_dir(root) as tmp:
        for i, split in enumerate(SPLITS):
            write_shards(splits[split], tmp / split,
                         shuffle_seed=data_cfg.synthetic.seed + i if split == "train" else None)
        meta = {"config": OmegaConf.to_container(data_cfg.synthetic, resolve=True),
                "text_model": data_cfg.text_model, "version": SYNTHETIC_VERSION,
                "clips": {s: len(splits[s]) for s in SPLITS},
                "identities": {s: len({r["identity"] for r in splits[s]}) for s in SPLITS}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return root


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

    # -- building -----------------------------------------------------------------------
    def prepare_data(self) -> None:  # local rank 0 only
        if self.shard_root is None and self.cfg.source == "synthetic":
            build_synthetic_shards(self.cfg)

    def _root(self) -> Path:
        if self.shard_root is not None:
            return self.shard_root
        if self.cfg.source == "synthetic":
            return Path(self.cfg.cache_dir) / (
                f"synthetic-{synthetic_cache_key(self.cfg.synthetic, self.cfg.text_model)}")
        raise ValueError(f"unknown data.source {self.cfg.source!r}")

    def split_dir(self, split: str) -> Path:
        return self._root() / split

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            check_shard_dir(self.split_dir(split))

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


__all__ = ["InterviewDataModule", "ShardError", "build_synthetic_shards", "SPLITS"]
