"""Atomic files and folders, the temporaries of killed writers, and workers that die with
their parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_modules.files import atomic_dir, atomic_write, remove_stale

ROOT = Path(__file__).resolve().parents[3]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_writers_temporaries_go_and_a_live_ones_stay(tmp_path):
    final = tmp_path / "shards"
    dead = tmp_path / f".shards.tmp-{_dead_pid()}-abcd1234"
    live = tmp_path / f".shards.tmp-{os.getpid()}-abcd1234"
    dead.mkdir()
    live.mkdir()
    with atomic_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    assert not dead.exists() and live.exists()
    assert remove_stale(final) == 0


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def fail(p):
        p.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f", fail)
    assert list(tmp_path.iterdir()) == []


WRITER = """
import os, sys, numpy as np
from data_modules.shards import write_shards
from tests.conftest import make_records
recs = make_records(n_ids=2000, clips=2, size=32)
print("start", flush=True)
write_shards(recs, sys.argv[1], chunk_size=2)
"""


def _marked(marker: str) -> list[int]:
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env.read_bytes():
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


def test_a_kill_during_shard_writing_leaves_no_worker_and_the_next_build_cleans_up(tmp_path):
    """The reported defect: SIGKILL while litdata wrote shards left its worker running for
    more than 40 s, and the temporary folder forever."""
    marker = f"FL_KILL_TEST_{os.getpid()}_{time.time_ns()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), marker: "1"}
    out = tmp_path / "split"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    deadline = time.time() + 60
    while time.time() < deadline and not (len(_marked(marker)) > 1
                                          and list(tmp_path.glob(".split.tmp-*/*"))):
        time.sleep(0.05)
    assert len(_marked(marker)) > 1, "the writer never started its worker"
    proc.kill()
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and _marked(marker):
        time.sleep(0.05)
    assert _marked(marker) == [], "a shard writer outlived the killed run"
    assert list(tmp_path.glob(".split.tmp-*"))
    from data_modules.files import atomic_dir as again

    with again(out) as tmp:
        tmp.mkdir()
    assert not list(tmp_path.glob(".split.tmp-*"))


def test_a_folder_completed_meanwhile_is_kept_for_its_readers(tmp_path):
    final = tmp_path / "cache"
    with atomic_dir(final) as mine:
        mine.mkdir()
        (mine / "x").write_text("mine")
        with atomic_dir(final) as theirs:  # a second writer, finishing first
            theirs.mkdir()
            (theirs / "x").write_text("theirs")
    assert (final / "x").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
