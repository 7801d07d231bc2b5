import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data_modules.batch import SensitiveAccessError
from data_modules.collate import collate_records, identity_code, strip_sensitive
from data_modules.datamodule import InterviewDataModule
from data_modules.shards import ShardError, check_shard_dir, write_shards
from tests.conftest import make_records


def test_collate_pads_and_masks_variable_lengths(records):
    recs = records[:4]
    b = collate_records(recs)
    s_max = max(len(r["text"]) for r in recs)
    t_max = max(len(r["audio"]) for r in recs)
    assert b.text.shape == (4, s_max, 384) and b.audio.shape == (4, t_max, 8)
    for i, r in enumerate(recs):
        n = len(r["text"])
        assert b.text_mask[i].sum() == n and b.text_mask[i, :n].all()
        assert torch.allclose(b.text[i, :n], torch.as_tensor(r["text"]).float())
        assert (b.text[i, n:] == 0).all()
        assert b.audio_mask[i].sum() == len(r["audio"])
    assert b.video.dtype == torch.float32 and 0 <= b.video.min() and b.video.max() <= 1
    assert b.faces.shape == (4, 2, 3, 16, 16)
    assert b.sensitive.gender.tolist() == [r["gender"] for r in recs]
    # same person -> same code; different people -> different codes
    assert b.identity[0] == b.identity[1] and b.identity[0] != b.identity[2]


def test_stripped_records_give_batches_without_sensitive(records):
    b = collate_records([strip_sensitive(r) for r in records[:3]])
    assert not b.has_sensitive
    with pytest.raises(SensitiveAccessError):
        _ = b.sensitive


def test_collate_rejects_mismatched_face_sets(records):
    bad = dict(records[1], faces=np.zeros((5, 3, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="face sets differ"):
        collate_records([records[0], bad])


def test_identity_code_is_stable():
    assert identity_code("J4GQm9j0JZ0") == identity_code("J4GQm9j0JZ0") != identity_code("x")


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for i, split in enumerate(("train", "val", "test")):
        write_shards(make_records(8, 2, seed=i, prefix=split[:2]), root / split, shuffle_seed=i)
    return root


def _dm(shard_root, label_free, workers=0):
    cfg = OmegaConf.create({"source": "synthetic", "batch_size": 5, "num_workers": workers})
    dm = InterviewDataModule(cfg, label_free=label_free, shard_root=shard_root)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("workers", [0, 2])
def test_datamodule_streams_every_clip_once(shard_root, workers):
    dm = _dm(shard_root, label_free=False, workers=workers)
    ids = [c for b in dm.train_dataloader() for c in b.clip_id]
    assert sorted(ids) == sorted(r["clip_id"] for r in make_records(8, 2, seed=0, prefix="tr"))
    assert dm.feature_dims() == {"text": 384, "audio": 8}


def test_label_free_training_loader_never_carries_attributes(shard_root):
    dm = _dm(shard_root, label_free=True)
    batches = list(dm.train_dataloader())
    assert batches and all(not b.has_sensitive for b in batches)
    # probes and fairness metrics still get them through their own loader
    assert all(b.has_sensitive for b in dm.eval_dataloader("train"))
    assert all(b.has_sensitive for b in dm.val_dataloader())


def test_missing_shard_dir_names_path(tmp_path):
    with pytest.raises(ShardError, match=str(tmp_path / "nope")):
        check_shard_dir(tmp_path / "nope")
    cfg = OmegaConf.create({"source": "synthetic", "batch_size": 5, "num_workers": 0})
    with pytest.raises(ShardError, match="train"):
        InterviewDataModule(cfg, shard_root=tmp_path).setup("fit")


def test_corrupt_shard_dir_names_path(tmp_path):
    d = write_shards(make_records(2, 2), tmp_path / "train")
    assert check_shard_dir(d) == 4
    chunk = next(d.glob("*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(ShardError, match="truncated.*" + chunk.name):
        check_shard_dir(d)
    (d / "index.json").write_text("{not json")
    with pytest.raises(ShardError, match="corrupt shard index.*index.json"):
        check_shard_dir(d)
    chunk.unlink()
    (d / "index.json").write_text(json.dumps({"chunks": [{"filename": chunk.name, "chunk_size": 4}]}))
    with pytest.raises(ShardError, match="missing.*" + chunk.name):
        check_shard_dir(d)


def test_write_shards_leaves_nothing_half_written(tmp_path):
    recs = make_records(2, 1)
    del recs[1]["faces"]
    with pytest.raises(ValueError, match="lacks keys"):
        write_shards(recs, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_speaker_norm_standardises_each_candidate_over_their_own_clips(shard_root):
    cfg = OmegaConf.create({"source": "synthetic", "batch_size": 5, "num_workers": 0,
                            "speaker_norm": "person"})
    dm = InterviewDataModule(cfg, label_free=True, shard_root=shard_root)
    dm.setup("fit")
    frames: dict[int, list] = {}
    for split, loader in (("train", dm.train_dataloader()), ("test", dm.test_dataloader())):
        for b in loader:
            assert split == "test" or not b.has_sensitive  # still label-free in training
            for i, p in enumerate(b.identity.tolist()):
                frames.setdefault(p, []).append(b.audio[i][b.audio_mask[i]].double())
    assert len(frames) == 16
    for rows in frames.values():  # every candidate: mean 0, spread 1 over all their frames
        a = torch.cat(rows)
        assert a.mean(0).abs().max() < 0.01 and (a.std(0, unbiased=False) - 1).abs().max() < 0.01
    # the raw features are not standardised per person: the transform did it
    raw = _dm(shard_root, label_free=False)
    b = next(iter(raw.test_dataloader()))
    assert b.audio[0][b.audio_mask[0]].mean(0).abs().max() > 0.05
