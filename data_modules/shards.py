"""Streaming shards (litdata): one record per clip, written once, read by every loader.

A shard directory is whole or absent: it is written to a temporary sibling and renamed into
place only when complete, so an interrupted build never leaves a half-written cache.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from data_modules.schema import check_record


class ShardError(RuntimeError):
    """A shard directory is missing or unreadable; the message names the path."""


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling of `final`; on success it replaces `final`, on failure it
    is removed. Readers see the whole directory or none of it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.exists():  # a stale result, e.g. from an older run
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _identity(record):
    # module-level so litdata's worker processes can pickle it
    return record


def write_shards(items: Sequence, out_dir: Path, *, shuffle_seed: int | None = None,
                 chunk_size: int = 8, fn=None) -> Path:
    """Write records as litdata shards at `out_dir` (atomically). Returns `out_dir`.

    `items` are the records themselves, or with `fn` what `fn` turns into a record (e.g.
    a clip to load from disk), so a large corpus streams through the writer one clip at a
    time instead of being held in memory.

    Chunks hold `chunk_size` records: litdata hands whole chunks to DDP ranks and workers,
    so small chunks keep every rank busy even on a small split (a rank left with no chunk
    makes its loader empty and the run fails).
    """
    from litdata import optimize

    out_dir = Path(out_dir)
    if not items:
        raise ValueError(f"{out_dir}: no records to write")
    if fn is None:
        for r in items:
            check_record(r, str(out_dir))
    items = list(items)
    if shuffle_seed is not None:
        # litdata streams chunks in order within a worker; shuffle once here so chunks mix
        order = np.random.default_rng(shuffle_seed).permutation(len(items))
        items = [items[i] for i in order]
    with atomic_dir(out_dir) as tmp:
        optimize(fn=fn or _identity, inputs=items, output_dir=str(tmp), chunk_size=chunk_size,
                 num_workers=1, verbose=False, start_method="fork")
    return out_dir


def check_shard_dir(path: Path) -> int:
    """Validate a shard directory; returns its number of records or raises ShardError."""
    path = Path(path)
    index = path / "index.json"
    if not path.is_dir():
        raise ShardError(f"shard directory not found: {path}")
    if not index.is_file():
        raise ShardError(f"not a shard directory (no index.json): {path}")
    try:
        meta = json.loads(index.read_text())
        chunks = meta["chunks"]
        total = sum(int(c["chunk_size"]) for c in chunks)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ShardError(f"corrupt shard index {index}: {e}") from None
    if not chunks or total == 0:
        raise ShardError(f"shard directory holds no clips: {path} (delete {path.parent} to "
                         "rebuild it)")
    for c in chunks:
        f = path / c["filename"]
        if not f.is_file():
            raise ShardError(f"shard chunk missing: {f}")
        if "chunk_bytes" in c and f.stat().st_size != int(c["chunk_bytes"]):
            raise ShardError(
                f"shard chunk truncated: {f} ({f.stat().st_size} bytes, index says {c['chunk_bytes']})"
            )
    return total


def open_streaming(path: Path, *, shuffle: bool, seed: int, transform=None,
                   equal_ranks: bool = False):
    """A litdata StreamingDataset over a checked shard directory (DDP/worker aware).

    equal_ranks=True (training) lets litdata drop a few items so every DDP rank gets the same
    number of batches; otherwise ranks would wait on each other's collectives forever.
    Evaluation keeps every clip (False): its metrics only sync at epoch end.
    """
    import warnings

    from litdata import StreamingDataset

    check_shard_dir(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*disabled the `drop_last` option.*")
        return StreamingDataset(str(path), shuffle=shuffle, seed=seed,
                                drop_last=None if equal_ranks else False, transform=transform)
