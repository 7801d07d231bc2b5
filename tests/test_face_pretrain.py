"""Label-free identity pretraining of the discriminator's face encoder."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data_modules.collate import collate_records, strip_sensitive
from fair_lightning import face_pretrain
from fair_lightning.face_pretrain import (
    collect_person_images,
    holdout_last_clip,
    identity_face_encoder,
    pretrain_identity,
)
from fair_lightning.models import FaceEncoder
from tests.conftest import make_records


def _person_coloured(n_ids=6, clips=3, seed=0):
    """Records whose faces show one colour per person under per-clip noise."""
    rng = np.random.default_rng(seed)
    recs = make_records(n_ids, clips, seed=seed)
    colours = rng.integers(30, 226, (n_ids, 3))
    for r in recs:
        who = int(r["identity"][1:])
        for key in ("faces", "video"):
            noise = rng.normal(0, 20, r[key].shape)
            r[key] = np.clip(colours[who][None, :, None, None] + noise, 0, 255).astype(np.uint8)
    return recs


def _loader(recs, batch=4):
    # what the training loader gives in indirect mode: no gender or ethnicity
    return [collate_records([strip_sensitive(r) for r in recs[i:i + batch]])
            for i in range(0, len(recs), batch)]


def test_collects_faces_and_video_frames_per_person_without_attributes():
    recs = make_records(3, 2)
    images, person, clip = collect_person_images(_loader(recs))
    per_clip = recs[0]["faces"].shape[0] + recs[0]["video"].shape[0]
    assert images.dtype == torch.uint8 and len(images) == len(recs) * per_clip
    assert person.tolist() == [i // (2 * per_clip) for i in range(len(images))]
    assert torch.equal(images[:2], torch.as_tensor(recs[0]["faces"]))
    assert clip.max() == len(recs) - 1


def test_holdout_is_each_persons_last_clip():
    person = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    clip = torch.tensor([0, 0, 1, 1, 2, 3, 4])
    assert holdout_last_clip(person, clip).tolist() == [False, False, True, True, False, True,
                                                         False]


def test_pretraining_learns_to_recognise_people_on_unseen_clips():
    torch.manual_seed(0)
    images, person, clip = collect_person_images(_loader(_person_coloured()))
    enc = FaceEncoder(8, channels=4)
    stats = pretrain_identity(enc, images, person, clip, epochs=15, lr=0.01, batch_size=16)
    assert stats["face_pretrain/heldout_identity_acc"] > 0.8  # chance: 1/6
    assert 1 <= stats["face_pretrain/best_epoch"] <= 15


def test_needs_two_clips_per_person():
    images, person, clip = collect_person_images(_loader(make_records(3, 1)))
    with pytest.raises(ValueError, match="two clips"):
        pretrain_identity(FaceEncoder(8, channels=4), images, person, clip, epochs=1, lr=0.01)


def test_encoder_is_cached_and_reused(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"face_dim": 8, "face_pretrain_epochs": 2, "face_pretrain_lr": 0.01})
    loader = _loader(_person_coloured(4, 2))
    monkeypatch.setattr(face_pretrain, "FaceEncoder", lambda d: FaceEncoder(d, channels=4))
    state, stats = identity_face_encoder(cfg, loader, tmp_path, data_key="k", seed=0)
    assert len(list(tmp_path.glob("face_encoder-*.pt"))) == 1
    assert len(list(tmp_path.iterdir())) == 1  # no temporary file left behind

    def boom(*a, **k):
        raise AssertionError("pretrained again instead of reading the cache")

    monkeypatch.setattr(face_pretrain, "pretrain_identity", boom)
    again, stats2 = identity_face_encoder(cfg, loader, tmp_path, data_key="k", seed=0)
    assert stats2 == stats and all(torch.equal(state[k], again[k]) for k in state)
    with pytest.raises(AssertionError, match="pretrained again"):  # another seed: new encoder
        identity_face_encoder(cfg, loader, tmp_path, data_key="k", seed=1)
