"""Label-free identity pretraining of the discriminator's face encoder."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data_modules.collate import collate_records, strip_sensitive
from fair_lightning.models import FaceEncoder, face_pretrain
from fair_lightning.models.face_pretrain import (
    collect_person_images,
    cross_clip_retrieval,
    holdout_people,
    identity_face_encoder,
    pretrain_identity,
)
from tests.conftest import make_records


def _person_coloured(n_ids=6, clips=3, seed=0, background=False):
    """Records whose faces show one colour per person under per-clip noise; with
    `background`, the outer ring of every image takes a random colour per clip."""
    rng = np.random.default_rng(seed)
    recs = make_records(n_ids, clips, seed=seed)
    colours = rng.integers(30, 226, (n_ids, 3))
    for r in recs:
        who = int(r["identity"][1:])
        ring = rng.integers(0, 256, 3)
        for key in ("faces", "video"):
            noise = rng.normal(0, 20, r[key].shape)
            img = colours[who][None, :, None, None] + noise
            if background:
                w = r[key].shape[-1] // 4
                inner = np.zeros(r[key].shape[-2:], bool)
                inner[w:-w, w:-w] = True
                img = np.where(inner, img, ring[None, :, None, None] + noise)
            r[key] = np.clip(img, 0, 255).astype(np.uint8)
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


def test_holdout_takes_whole_people_with_two_clips():
    person = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7])
    clip = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    held = holdout_people(person, clip, 0.5, seed=0)
    out = person[held].unique()
    assert len(out) == 3  # half of the 6 people with two clips
    assert not torch.isin(torch.tensor([6, 7]), out).any()  # one clip: never held out
    assert torch.equal(held, torch.isin(person, out))  # all of a person's images or none
    assert not torch.equal(held, holdout_people(person, clip, 0.5, seed=1))


def test_cross_clip_retrieval_ignores_the_same_clip():
    # images 0 and 1 are one clip of person 0, almost identical; the nearest image from
    # another clip decides
    z = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.1, 1.0], [1.0, 0.2], [0.2, 1.0]])
    person = torch.tensor([0, 0, 1, 1, 0, 1])
    clip = torch.tensor([0, 0, 1, 2, 3, 4])
    assert cross_clip_retrieval(z, person, clip) == 1.0
    assert cross_clip_retrieval(z, torch.tensor([0, 0, 1, 1, 1, 0]), clip) < 0.5


def test_needs_two_clips_per_person():
    images, person, clip = collect_person_images(_loader(make_records(6, 1)))
    with pytest.raises(ValueError, match="two clips"):
        pretrain_identity(FaceEncoder(8, channels=4), images, person, clip, epochs=1, lr=0.01)


def test_encoder_is_cached_and_reused(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"face_dim": 8, "face_pretrain_epochs": 2, "face_pretrain_lr": 0.01})
    loader = _loader(_person_coloured(5, 2))
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


def test_other_ranks_wait_for_rank_0s_encoder_instead_of_pretraining(tmp_path, monkeypatch):
    """Under DDP/SLURM only rank 0 pretrains; a rank > 0 waits for the cached file (here
    written 1 s later, as rank 0 would) and loads it, and a rank 0 that never writes it
    ends the wait with an error naming the file."""
    import threading

    cfg = OmegaConf.create({"face_dim": 8, "face_pretrain_epochs": 2, "face_pretrain_lr": 0.01})
    loader = _loader(_person_coloured(5, 2))
    monkeypatch.setattr(face_pretrain, "FaceEncoder", lambda d: FaceEncoder(d, channels=4))
    rank0 = tmp_path / "rank0"
    state, stats = identity_face_encoder(cfg, loader, rank0, data_key="k", seed=0)
    written = next(rank0.glob("face_encoder-*.pt"))

    def boom(*a, **k):
        raise AssertionError("a rank other than 0 pretrained")

    monkeypatch.setattr(face_pretrain, "pretrain_identity", boom)
    shared = tmp_path / "shared"
    shared.mkdir()
    later = threading.Timer(1.0, lambda: written.rename(shared / written.name))
    later.start()
    got, got_stats = identity_face_encoder(cfg, None, shared, data_key="k", seed=0, rank=1,
                                           timeout_s=30)
    later.join()
    assert got_stats == stats and all(torch.equal(state[k], got[k]) for k in state)
    with pytest.raises(TimeoutError, match=r"face_encoder-.*\.pt.*rank 0's log"):
        identity_face_encoder(cfg, None, shared, data_key="k", seed=5, rank=1, timeout_s=0.5)
