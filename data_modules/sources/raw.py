"""What every raw-video source shares: clips listed by `scan`, preprocessed once into a
store, split by identity, and streamed clip by clip into the shards (never all in memory).

A subclass only reads its corpus layout: `scan` returns the clips (with label, transcript,
person and attributes) and the clips it had to skip, each with a reason.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np

from data_modules.errors import CorpusError
from data_modules.preprocess import (
    ClipEntry,
    Settings,
    Skipped,
    Store,
    digest,
    load_record,
    preprocess,
)
from data_modules.schema import SPLITS, UNKNOWN, check_record
from data_modules.shards import SHARD_FORMAT
from data_modules.sources import Source, to_plain, write_splits
from data_modules.splits import stratified_split

log = logging.getLogger(__name__)


def _record(entry: ClipEntry, store: Store) -> dict:
    # module-level (through partial) so litdata's writer can call it
    record = load_record(entry, store)
    check_record(record, f"preprocessed clip {entry.clip_id!r}")
    return record


def person_attribute(values: list[int]) -> int:
    """A person's attribute from their clips' annotations: the most common known value."""
    known = [v for v in values if v != UNKNOWN]
    return Counter(known).most_common(1)[0][0] if known else UNKNOWN


class RawSource(Source):
    """Base of `chalearn` and `manifest`: subclasses set `name` and implement `scan`,
    `corpus` and `split_settings`."""

    def __init__(self, data_cfg):
        super().__init__(data_cfg)
        self._scan: tuple[list[ClipEntry], list[Skipped]] | None = None
        self.report = None

    # -- what a subclass provides -----------------------------------------------------
    def scan(self) -> tuple[list[ClipEntry], list[Skipped]]:
        raise NotImplementedError

    def corpus(self) -> Path:
        """The corpus root or file (named in errors and in the cache key)."""
        raise NotImplementedError

    def split_settings(self) -> dict:
        """{"mode": "identity" | "official", "fractions": [...], "seed": int}."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def scanned(self) -> tuple[list[ClipEntry], list[Skipped]]:
        if self._scan is None:
            self._scan = self.scan()
            if not self._scan[0]:
                raise CorpusError(f"{self.corpus()}: no usable clip found "
                                  f"({len(self._scan[1])} skipped)")
        return self._scan

    def settings(self) -> Settings:
        return Settings.from_cfg(self.cfg.preprocess)

    def store(self) -> Store:
        root = (Path(self.cfg.cache_dir) / "preprocessed"
                / f"{self.name}-{digest(self.corpus().resolve(), self.settings().key())}")
        return Store(root, digest(self.cfg.text_model, self.cfg.preprocess.max_sentences))

    def cache_key(self) -> str:
        entries, skipped = self.scanned()
        store = self.store()
        clips = sorted((e.clip_id, e.identity, store.input_digest(e), e.label, e.gender,
                        e.ethnicity, e.official_split, digest(e.transcript)) for e in entries)
        return digest(self.name, SHARD_FORMAT, self.settings().key(), store.text_dir.name,
                      sorted(self.split_settings().items()), clips,
                      sorted((s.clip_id, s.reason) for s in skipped))[:16]

    def shuffle_seed(self) -> int:
        # from the clips' names, not the cache key: that holds file times, and a copy of the
        # same corpus must train the same way
        entries, _ = self.scanned()
        return int(digest(sorted(e.clip_id for e in entries), self.split_settings()["seed"])[:8],
                   16)

    def describe(self) -> dict:
        return {"corpus": str(self.corpus()), "preprocess": to_plain(self.cfg.preprocess),
                "split": self.split_settings(), "text_model": self.cfg.text_model}

    def assign_splits(self, entries: list[ClipEntry]) -> dict[str, list[ClipEntry]]:
        cfg = self.split_settings()
        out: dict[str, list[ClipEntry]] = {s: [] for s in SPLITS}
        if cfg["mode"] == "official":
            for e in entries:
                out[e.official_split].append(e)
            return out
        people = sorted({e.identity for e in entries})
        if len(people) < 3:
            raise CorpusError(f"{self.corpus()}: {len(people)} usable people; identity-disjoint "
                              "train/val/test splits need at least 3")
        clips_of: dict[str, list[ClipEntry]] = {p: [] for p in people}
        for e in entries:
            clips_of[e.identity].append(e)
        gender = np.array([person_attribute([c.gender for c in clips_of[p]]) for p in people])
        eth = np.array([person_attribute([c.ethnicity for c in clips_of[p]]) for p in people])
        split = stratified_split(gender, eth, cfg["fractions"],
                                 np.random.default_rng(cfg["seed"]))
        for p, s in zip(people, split, strict=True):
            out[SPLITS[s]].extend(clips_of[p])
        return out

    def write(self, tmp: Path) -> dict:
        entries, skipped = self.scanned()
        store = self.store()
        usable, report = preprocess(
            entries, skipped, store=store, settings=self.settings(),
            text_model=self.cfg.text_model, max_sentences=self.cfg.preprocess.max_sentences,
            workers=self.cfg.preprocess.workers or os.cpu_count() or 1,
            source=self.name, corpus=str(self.corpus()))
        self.report = report
        log.info("%s: %d usable clips, %d skipped (report: %s)", self.name, report.usable,
                 sum(report.skipped.values()), store.root / "report.md")
        splits = self.assign_splits(usable)
        empty = [s for s in SPLITS if not splits[s]]
        if empty:
            raise CorpusError(f"{self.corpus()}: no usable clip in split(s) {empty}")
        shared = self.shared_identities(splits)
        if shared:
            log.warning("%s: official splits share %d people across train/val/test; scores on "
                        "val/test are not on unseen people (probes stay identity-disjoint)",
                        self.name, shared)
        counts = write_splits(splits, tmp, fn=partial(_record, store=store),
                              shuffle_seed=self.shuffle_seed(), identity=lambda e: e.identity)
        return {**counts, "shared_identities": shared, "skipped": report.skipped,
                "preprocess_report": str(store.root / "report.json")}

    @staticmethod
    def shared_identities(splits: dict[str, list[ClipEntry]]) -> int:
        seen = Counter()
        for s in SPLITS:
            for person in {e.identity for e in splits[s]}:
                seen[person] += 1
        return sum(1 for n in seen.values() if n > 1)
