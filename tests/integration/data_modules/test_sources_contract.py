"""The contract every data source keeps: schema records, identity-disjoint splits, the
label-free strip, and a cache that is reused. A new source must add its tiny config here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.rawmedia import make_chalearn_corpus, make_manifest_corpus
from data_modules.batch import SensitiveAccessError
from data_modules.collate import collate_records, strip_sensitive
from data_modules.schema import FIELDS, SENSITIVE, SPLITS, check_record
from data_modules.shards import open_streaming
from data_modules.sources import SOURCES, build_shards, get_source, shard_root
from fair_lightning.config import ConfigError, load_config


def _synthetic(tmp_path):
    return {"data.synthetic.num_identities": "20", "data.synthetic.clips_per_identity": "2",
            "data.synthetic.audio_seconds": "[1.0,1.5]", "data.synthetic.image_size": "16"}


def _chalearn(tmp_path):
    root = tmp_path / "chalearn"
    make_chalearn_corpus(root, people=6, clips_per_person=2, seed=0)
    return {"data.chalearn.root": str(root), "data.preprocess.workers": "1"}


def _manifest(tmp_path):
    path = make_manifest_corpus(tmp_path / "manifest", people=6, clips_per_person=2, seed=0)
    return {"data.manifest.path": str(path), "data.preprocess.workers": "1"}


TINY = {"synthetic": _synthetic, "chalearn": _chalearn, "manifest": _manifest}


def test_every_source_has_a_contract_config():
    assert set(TINY) == set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_contract(name, tmp_path):
    ov = {"data.source": name, "data.cache_dir": str(tmp_path / "cache"), **TINY[name](tmp_path)}
    cfg = load_config("baseline", list(ov.items())).data
    root = build_shards(cfg)
    assert root == shard_root(cfg) and root.name == f"{name}-{get_source(cfg).cache_key()}"
    meta = json.loads((root / "meta.json").read_text())
    people = {}
    for split in SPLITS:
        ds = open_streaming(root / split, shuffle=False, seed=0)
        records = [ds[i] for i in range(len(ds))]
        assert len(records) == meta["clips"][split] > 0
        for r in records:
            check_record(r, f"{name}/{split}")
            assert {f.name for f in FIELDS} <= set(r)
        people[split] = {r["identity"] for r in records}
        assert len(people[split]) == meta["identities"][split]
        # the label-free strip: the training step of label-free runs cannot read attributes
        stripped = collate_records([strip_sensitive(r) for r in records[:4]])
        with pytest.raises(SensitiveAccessError):
            stripped.sensitive  # noqa: B018
        full = collate_records(records[:4]).sensitive
        for attr, groups in SENSITIVE.items():
            values = getattr(full, attr).numpy()
            assert ((values >= -1) & (values < groups)).all()
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not people[a] & people[b], (a, b)
    # cached: a second build is the same directory, untouched
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert build_shards(cfg) == root and (root / "meta.json").stat().st_mtime_ns == stamp


def test_schema_errors_name_the_clip_and_field():
    good = {"clip_id": "p1.000", "identity": "p1",
            "text": np.zeros((2, 4), np.float16), "audio": np.zeros((3, 2), np.float16),
            "video": np.zeros((1, 3, 8, 8), np.uint8), "faces": np.zeros((2, 3, 8, 8), np.uint8),
            "label": 0.5, "merit": float("nan"), "gender": 1, "ethnicity": -1}
    check_record(good)
    for key, value, match in (("text", np.zeros((2, 4), np.float32), "'text' must be a 2-d float16"),
                              ("gender", 2, "'gender' must be an int in \\[-1, 2\\)"),
                              ("identity", "", "'identity' must be a non-empty string")):
        with pytest.raises(ValueError, match=match) as e:
            check_record({**good, key: value}, "somewhere")
        assert "somewhere" in str(e.value) and "p1.000" in str(e.value)
    with pytest.raises(ValueError, match="lacks keys \\['faces'\\]"):
        check_record({k: v for k, v in good.items() if k != "faces"})


def test_an_unknown_source_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="data.source.*synthetic"):
        load_config("baseline", [("data.source", "youtube")])
