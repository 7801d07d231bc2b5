"""Data sources behind one interface, found by `data.source`.

A source turns a corpus (the synthetic generator, a ChaLearn download, a CSV manifest of
one's own clips) into schema records (`data_modules.schema`), each tagged with its split.
`build_shards` writes them once to litdata shards under `data.cache_dir/<source>-<key>`,
where the key digests everything the records depend on, so a changed setting rebuilds and
an unchanged one reuses. The datamodule then only streams shards: it never needs to know
which source made them.

Adding a corpus: a module or package here with a `Source` subclass, and one line in
`SOURCES` (imported lazily, so heavy dependencies load only when that source is used).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from data_modules.files import atomic_dir
from data_modules.schema import SPLITS, check_record
from data_modules.shards import write_shards

log = logging.getLogger(__name__)

# data.source -> "module:Class"
SOURCES: dict[str, str] = {
    "synthetic": "data_modules.sources.synthetic:SyntheticSource",
    "chalearn": "data_modules.sources.chalearn:ChalearnSource",
    "manifest": "data_modules.sources.manifest:ManifestSource",
}


class Source:
    """One corpus. Subclasses set `name` and implement `cache_key` and `records`."""

    name = ""

    def __init__(self, data_cfg: DictConfig):
        self.cfg = data_cfg

    def cache_key(self) -> str:
        """A short digest of everything the records depend on (settings, file versions)."""
        raise NotImplementedError

    def records(self) -> Iterator[tuple[str, dict]]:
        """(split, record) pairs; every split of `SPLITS` must get at least one record."""
        raise NotImplementedError

    def size_hint(self) -> int | None:
        """How many records `records` will yield, when known ahead (for progress lines)."""
        return None

    def shuffle_seed(self) -> int:
        """Seed of the one shuffle of the training shards (litdata streams chunks in order)."""
        return int(self.cache_key()[:8], 16)

    def describe(self) -> dict:
        """What meta.json records about the source's settings."""
        return {}

    def write(self, tmp: Path) -> dict:
        """Write one shard directory per split under `tmp`; returns counts for meta.json.

        This default streams: each record's arrays go to a file in a scratch folder under
        `tmp` as the source yields it, and the shard writer loads them back in the order it
        needs (the train split is written shuffled), so memory does not grow with the
        corpus. `tmp` is the build's atomic folder, so a killed build leaves no scratch."""
        from data_modules.progress import Progress

        scratch = tmp / ".records"
        scratch.mkdir(parents=True)
        splits: dict[str, list[Spilled]] = {s: [] for s in SPLITS}
        try:
            with Progress(self.size_hint(), f"{self.name} data", unit="clips",
                          logger=log) as bar:
                for i, (split, record) in enumerate(self.records()):
                    if split not in splits:
                        raise ValueError(f"source {self.name!r} gave split {split!r}; "
                                         f"expected {SPLITS}")
                    check_record(record, f"source {self.name!r}")
                    splits[split].append(Spilled.save(record, scratch / f"{i}.npz"))
                    bar.update()
            empty = [s for s in SPLITS if not splits[s]]
            if empty:
                raise ValueError(f"source {self.name!r} gave no clip for split(s) {empty}")
            return write_splits(splits, tmp, fn=Spilled.load, shuffle_seed=self.shuffle_seed(),
                                identity=lambda x: x.identity)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True, eq=False)  # its fields dict is not hashable
class Spilled:
    """A record waiting on disk: its arrays in an npz file (which restores them exactly),
    its text and scalar fields here, and its field order (the shards store it)."""

    path: str
    keys: tuple[str, ...]
    fields: dict

    @property
    def identity(self) -> str:
        return self.fields["identity"]

    @classmethod
    def save(cls, record: dict, path: Path) -> Spilled:
        arrays = {k: v for k, v in record.items() if isinstance(v, np.ndarray)}
        np.savez(path, **arrays)  # no atomic rename: the scratch folder is never reused
        return cls(str(path), tuple(record),
                   {k: v for k, v in record.items() if k not in arrays})

    def load(self) -> dict:
        with np.load(self.path) as z:
            return {k: self.fields[k] if k in self.fields else z[k] for k in self.keys}


def write_splits(splits: dict[str, list], tmp: Path, *, fn, shuffle_seed: int,
                 identity) -> dict:
    """Shards of every split under `tmp`, each item turned into its record by `fn` as the
    writer reaches it; the train split is shuffled once. Returns meta.json's counts."""
    for split in SPLITS:
        write_shards(splits[split], tmp / split, fn=fn,
                     shuffle_seed=shuffle_seed if split == "train" else None)
    return {"clips": {s: len(splits[s]) for s in SPLITS},
            "identities": {s: len({identity(x) for x in splits[s]}) for s in SPLITS}}


def get_source(data_cfg: DictConfig) -> Source:
    name = data_cfg.source
    if name not in SOURCES:
        raise ValueError(f"unknown data.source {name!r}; available: {', '.join(SOURCES)}")
    module, cls = SOURCES[name].split(":")
    return getattr(importlib.import_module(module), cls)(data_cfg)


def shard_root(data_cfg: DictConfig) -> Path:
    source = get_source(data_cfg)
    return Path(data_cfg.cache_dir) / f"{source.name}-{source.cache_key()}"


def build_shards(data_cfg: DictConfig) -> Path:
    """The source's shards, built once (atomically) and then reused; returns their root."""
    source = get_source(data_cfg)
    root = Path(data_cfg.cache_dir) / f"{source.name}-{source.cache_key()}"
    if (root / "meta.json").is_file():
        return root
    if root.exists():  # complete caches are renamed into place with their meta.json
        log.warning("removing an incomplete cache %s", root)
        shutil.rmtree(root)
    log.info("building %s shards into %s", source.name, root)
    with atomic_dir(root) as tmp:
        counts = source.write(tmp)
        meta = {"source": source.name, "key": source.cache_key(), **source.describe(), **counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return root


def to_plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


__all__ = ["SOURCES", "Source", "Spilled", "build_shards", "get_source", "shard_root",
           "write_splits"]
