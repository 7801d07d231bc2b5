"""Face pretraining learns: 15 epochs on 20 people (about 35 s, so outside the unit suite)."""

import torch

from fair_lightning.models import FaceEncoder, face_pretrain
from fair_lightning.models.face_pretrain import (
    collect_person_images,
    cross_clip_retrieval,
    holdout_people,
    pretrain_identity,
)
from tests.unit.test_face_pretrain import _loader, _person_coloured


def test_pretraining_learns_to_recognise_new_people_across_clips():
    torch.manual_seed(0)
    images, person, clip = collect_person_images(
        _loader(_person_coloured(n_ids=20, background=True)))
    enc = FaceEncoder(8, channels=4)
    held = holdout_people(person, clip, face_pretrain.HOLDOUT_PEOPLE, seed=0)
    with torch.no_grad():
        before = cross_clip_retrieval(enc.cnn(images[held].float() / 255.0), person[held],
                                      clip[held])
    stats = pretrain_identity(enc, images, person, clip, epochs=15, lr=0.01, batch_size=16)
    # 4 held-out people, 3 clips each: chance is 2 of the 11 other clips
    assert stats["face_pretrain/heldout_retrieval_acc"] > max(0.8, before + 0.2)
    assert 1 <= stats["face_pretrain/best_epoch"] <= 15
