"""Streaming shards (litdata): one record per clip, written once, read by every loader.

A shard directory is whole or absent: it is written to a temporary sibling and renamed into
place only when complete, so an interrupted build never leaves a half-written cache.

Shards hold data, never code. Every field is stored as numbers or text (litdata's numpy,
int, float and str formats), never pickle, and a directory whose index names another
format is refused before anything is read. Each chunk's SHA-256 is written next to it
(`checksums.json`) and checked when a run first opens the cache, so a changed or corrupt
chunk is an error that names it instead of different numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from data_modules.files import atomic_dir, file_sha256, forked_children_die_with_parent
from data_modules.schema import check_record

# bump when the on-disk layout changes: sources put it in their cache keys, so old caches
# are rebuilt instead of refused
SHARD_FORMAT = 2
# litdata formats that decode to numbers or text only (no pickle, no file paths)
DATA_FORMATS = {"str", "int", "float", "numpy"}
CHECKSUMS = "checksums.json"


class ShardError(RuntimeError):
    """A shard directory is missing or unreadable; the message names the path."""


def _data_only(item, load=None) -> dict:
    """The record to store: numpy and Python scalars become plain int/float, which litdata
    stores as numbers (a numpy scalar would go to its pickle format)."""
    record = load(item) if load is not None else item
    out = {}
    for k, v in record.items():
        if isinstance(v, (bool, np.bool_)):
            raise ValueError(f"field {k!r} of {record.get('clip_id')!r}: booleans are not stored")
        if isinstance(v, (float, np.floating)):
            v = float(v)
        elif isinstance(v, (int, np.integer)):
            v = int(v)
        out[k] = v
    return out


def _formats(index: dict) -> set[str]:
    return set(index.get("config", {}).get("data_format") or [])


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
    forked_children_die_with_parent()  # litdata's writer process must not outlive a kill
    with atomic_dir(out_dir) as tmp:
        optimize(fn=partial(_data_only, load=fn), inputs=items, output_dir=str(tmp),
                 chunk_size=chunk_size, num_workers=1, verbose=False, start_method="fork")
        index = json.loads((tmp / "index.json").read_text())
        if not _formats(index) <= DATA_FORMATS:  # a field type we do not store safely
            raise ValueError(f"{out_dir}: a field would be stored as "
                             f"{sorted(_formats(index) - DATA_FORMATS)}; only numbers, numpy "
                             "arrays and strings are stored")
        sums = {c["filename"]: file_sha256(tmp / c["filename"]) for c in index["chunks"]}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))
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
    bad = _formats(meta) - DATA_FORMATS
    if bad:
        raise ShardError(f"{index} stores fields as {sorted(bad)}, which can run code when "
                         f"read; refusing it (delete {path.parent} to rebuild the cache)")
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


def verify_checksums(path: Path) -> tuple[int, int]:
    """Check every chunk of a shard directory against checksums.json; returns (chunks,
    bytes). Raises ShardError naming the chunk and the way to rebuild."""
    path = Path(path)
    rebuild = f"delete {path.parent} and rerun to rebuild it"
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        raise ShardError(f"{path} has no {CHECKSUMS} (a cache from an older version, or not "
                         f"written by this project); {rebuild}")
    try:
        sums = json.loads(sums_file.read_text())
        chunks = json.loads((path / "index.json").read_text())["chunks"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ShardError(f"corrupt {sums_file} or index: {e}; {rebuild}") from None
    size = 0
    for c in chunks:
        f = path / c["filename"]
        if sums.get(c["filename"]) != file_sha256(f):
            raise ShardError(f"shard chunk {f} does not match its checksum (corrupt or "
                             f"changed); {rebuild}")
        size += f.stat().st_size
    return len(chunks), size


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
