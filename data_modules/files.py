"""Files and folders that appear whole or not at all, and processes that do not outlive
their parent.

Temporary names carry the writer's pid (`.<name>.tmp-<pid>-<random>`), so the next writer
in the same folder removes what a killed one left behind, and never what a live one is
still writing.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing.util
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale(final: Path) -> int:
    """Remove temporaries of `final` whose writer is dead; returns how many."""
    final = Path(final)
    removed = 0
    if not final.parent.is_dir():
        return 0
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write(path: Path, data: str | bytes | Callable[[Path], object]) -> None:
    """The one way files are written: `data` (text, bytes, or a function that writes the
    file at the path it is given) goes to a temporary sibling, which is then renamed to
    `path`. A reader sees the whole file or none of it; a failed write leaves nothing."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def json_text(obj) -> str:
    """JSON as every summary and report file holds it: indented, keys sorted, NaN kept."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling of `final`; on success it becomes `final`, on failure it
    is removed. Readers see the whole directory or none of it, and a folder that another
    writer completed meanwhile is never replaced under its readers."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = _tmp_name(final)
    try:
        yield tmp
        try:
            tmp.rename(final)
        except OSError:
            # another writer finished the same folder first (e.g. two seeds building one
            # cache): theirs is whole, and readers may already use it, so keep it
            if not (final.is_dir() and any(final.iterdir())):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process image in MB. VmHWM, not getrusage: a spawned
    child's ru_maxrss keeps its parent's size from the fork before its exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when its parent dies (a killed run must not leave
    workers behind). A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class _ForkHook:
    """Held for the process's life: multiprocessing keeps after-fork hooks weakly."""


_FORK_HOOK = _ForkHook()
_registered = False


def forked_children_die_with_parent() -> None:
    """Every process forked by `multiprocessing` from now on dies with its parent (litdata's
    shard writers are such children)."""
    global _registered
    if not _registered:
        multiprocessing.util.register_after_fork(_FORK_HOOK, lambda _: die_with_parent())
        _registered = True


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
