"""Shards hold data, never code: no pickle format is written or read, and every chunk is
checked against the checksum written with it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from data_modules.shards import (
    CHECKSUMS,
    ShardError,
    check_shard_dir,
    open_streaming,
    verify_checksums,
    write_shards,
)


class Payload:
    """What a crafted cache would hold: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def shards(tmp_path, records):
    return write_shards(records, tmp_path / "split")


def test_fields_are_stored_as_numbers_and_text(shards, records):
    index = json.loads((shards / "index.json").read_text())
    assert set(index["config"]["data_format"]) <= {"str", "int", "float", "numpy"}
    ds = open_streaming(shards, shuffle=False, seed=0)
    first = ds[0]
    assert isinstance(first["label"], float) and first["label"] == pytest.approx(
        float(records[0]["label"]))
    assert verify_checksums(shards)[0] == len(index["chunks"])


def test_a_cache_with_a_pickled_field_is_refused_and_runs_nothing(tmp_path, records):
    """The reported reproduction: a record field stored with litdata's pickle format ran
    its code when training read it. The index now names the format and it is refused."""
    from litdata import optimize

    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted"
    item = {**records[0], "label": Payload(marker)}
    optimize(fn=lambda x: x, inputs=[item], output_dir=str(crafted), chunk_size=8,
             num_workers=1, verbose=False, start_method="fork")
    marker.unlink(missing_ok=True)  # litdata's writer itself may unpickle what it wrote
    with pytest.raises(ShardError, match="stores fields as \\['pickle'\\].*run code"):
        check_shard_dir(crafted)
    with pytest.raises(ShardError):
        open_streaming(crafted, shuffle=False, seed=0)
    assert not marker.exists()


def test_writing_a_field_that_needs_pickle_is_an_error(tmp_path, records):
    with pytest.raises(ValueError, match="only numbers, numpy arrays and strings"):
        write_shards([{**r, "note": {1, 2}} for r in records[:2]], tmp_path / "x",
                     fn=lambda r: r)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage", ["zeros", "random"])
def test_corrupt_chunks_are_named_with_the_rebuild_hint(shards, damage):
    chunk = next(shards.glob("*.bin"))
    data = bytearray(chunk.read_bytes())
    start = len(data) // 2
    patch = bytes(200) if damage == "zeros" else os.urandom(len(data) - start)
    data[start:start + len(patch)] = patch
    chunk.write_bytes(bytes(data[: len(chunk.read_bytes())]))
    check_shard_dir(shards)  # the size still matches: only the checksum can tell
    with pytest.raises(ShardError, match=f"{chunk} does not match its checksum.*delete"):
        verify_checksums(shards)


def test_a_tampered_field_reads_as_a_number_even_with_a_forged_checksum(shards, tmp_path):
    """Someone who rewrites checksums.json too: the float format still decodes 8 bytes as a
    number, so no code can run."""
    marker = tmp_path / "pwned"
    first = open_streaming(shards, shuffle=False, seed=0)[0]
    wanted = np.float64(first["label"]).tobytes()
    chunk = next(c for c in sorted(shards.glob("*.bin")) if wanted in c.read_bytes())
    data = bytearray(chunk.read_bytes())
    at = data.find(wanted)
    data[at:at + 8] = __import__("pickle").dumps(Payload(marker))[:8]
    chunk.write_bytes(bytes(data))
    sums = json.loads((shards / CHECKSUMS).read_text())
    sums[chunk.name] = hashlib.sha256(bytes(data)).hexdigest()
    (shards / CHECKSUMS).write_text(json.dumps(sums))
    verify_checksums(shards)
    label = open_streaming(shards, shuffle=False, seed=0)[0]["label"]
    assert isinstance(label, float) and not marker.exists()


def test_a_cache_without_checksums_asks_for_a_rebuild(shards):
    (shards / CHECKSUMS).unlink()
    with pytest.raises(ShardError, match="no checksums.json.*delete"):
        verify_checksums(shards)


def test_train_stops_on_a_corrupt_cache_before_any_work(tmp_path, capsys):
    from fair_lightning.cli.train import main
    from fair_lightning.config import load_config
    from tests.conftest import tiny_overrides

    ov = tiny_overrides(tmp_path, **{"probe.enabled": "false"})
    from data_modules.sources import build_shards

    root = build_shards(load_config("baseline", ov).data)
    chunk = sorted((root / "val").glob("*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[100:300] = bytes(200)
    chunk.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["experiment=baseline", *[f"{k}={v}" for k, v in ov]]) == 2
    err = capsys.readouterr().err
    assert f"{chunk} does not match its checksum" in err and str(root) in err
    assert not (tmp_path / "run").exists()
    shutil.rmtree(root)
