"""A label-free face encoder for the discriminator: pretrained to tell candidates apart.

Trained only through D, the face encoder learns whatever D can match fastest, and on
interview clips that is clip-level nuisance (background, clothes, lighting) shared by the
face frames and the video the scorer sees. The main network then fools D by dropping that
nuisance and keeps gender. An encoder trained to recognise *people across clips* cannot
use clip-level nuisance, so its embedding holds what stays with a person (face shape,
hair, skin tone, and with them gender and ethnicity), which is what D must find in h.

It reads only face frames, video frames and identities of the training split: no
sensitive attribute. The same role can be filled by any face-recognition model through
`model.face_encoder: frozen`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fair_lightning.models import FaceEncoder
from fair_lightning.tracking import write_atomic

log = logging.getLogger(__name__)

BATCH_SIZE = 128  # 16 gave a sharper encoder at 3x the time, and no better removal in a run


def collect_person_images(loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All face and (unpadded) video frames of a split as uint8 [N, 3, H, W], with the
    person index [N] (0..P-1) and the clip index [N] of each image."""
    images, person, clip = [], [], []
    people: dict[int, int] = {}
    n_clips = 0
    for batch in loader:
        for i in range(len(batch)):
            frames = [batch.faces[i]]
            if batch.video.shape[-2:] == batch.faces.shape[-2:]:
                frames.append(batch.video[i][batch.video_mask[i]])
            frames = torch.cat(frames)
            images.append((frames * 255.0).round().to(torch.uint8))
            who = people.setdefault(int(batch.identity[i]), len(people))
            person.append(torch.full((len(frames),), who, dtype=torch.long))
            clip.append(torch.full((len(frames),), n_clips, dtype=torch.long))
            n_clips += 1
    if not images:
        raise ValueError("no clips to pretrain the face encoder on")
    return torch.cat(images), torch.cat(person), torch.cat(clip)


def holdout_last_clip(person: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """Mask of images from each person's last clip (people with >= 2 clips): scored on
    unseen clips, identity accuracy cannot be earned by remembering backgrounds."""
    held = torch.zeros_like(person, dtype=torch.bool)
    for p in person.unique():
        clips = clip[person == p].unique()
        if len(clips) >= 2:
            held |= clip == clips.max()
    return held


def pretrain_identity(encoder: FaceEncoder, images: torch.Tensor, person: torch.Tensor,
                      clip: torch.Tensor, *, epochs: int, lr: float, batch_size: int = BATCH_SIZE,
                      seed: int = 0) -> dict[str, float]:
    """Train `encoder.cnn` with a linear identity classifier; keep the epoch with the best
    identity accuracy on held-out clips. Returns that accuracy and the epoch."""
    gen = torch.Generator().manual_seed(seed)
    held = holdout_last_clip(person, clip)
    if not held.any():
        raise ValueError("face pretraining needs people with at least two clips")
    head = nn.Linear(encoder.cnn[-1].out_features, int(person.max()) + 1)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    fit_idx = torch.nonzero(~held).squeeze(1)
    best = (-1.0, 0, None)

    def accuracy() -> float:
        encoder.eval()
        with torch.no_grad():
            x = images[held].float() / 255.0
            pred = torch.cat([head(encoder.cnn(c)).argmax(1) for c in x.split(512)])
        return float((pred == person[held]).float().mean())

    for epoch in range(1, epochs + 1):
        encoder.train()
        for b in fit_idx[torch.randperm(len(fit_idx), generator=gen)].split(batch_size):
            x = images[b].float() / 255.0
            loss = F.cross_entropy(head(encoder.cnn(x)), person[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy()
        if acc > best[0]:
            best = (acc, epoch, {k: v.clone() for k, v in encoder.state_dict().items()})
    encoder.load_state_dict(best[2])
    log.info("face encoder: held-out identity accuracy %.3f (epoch %d, %d people)",
             best[0], best[1], int(person.max()) + 1)
    return {"face_pretrain/heldout_identity_acc": round(best[0], 4),
            "face_pretrain/best_epoch": best[1]}


def identity_face_encoder(model_cfg, loader, cache_dir: Path, *, data_key: str,
                          seed: int) -> tuple[dict, dict[str, float]]:
    """State dict of an identity-pretrained FaceEncoder, cached next to the data (it is a
    pure function of the data, the settings and the seed; DDP ranks then share one)."""
    settings = {"data": data_key, "face_dim": model_cfg.face_dim, "seed": seed,
                "batch_size": BATCH_SIZE, "epochs": model_cfg.face_pretrain_epochs,
                "lr": model_cfg.face_pretrain_lr}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"face_encoder-{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["state_dict"], saved["stats"]
    # own RNG stream: the main run must not depend on whether the cache already existed
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = FaceEncoder(model_cfg.face_dim)
        images, person, clip = collect_person_images(loader)
        stats = pretrain_identity(encoder, images, person, clip,
                                  epochs=model_cfg.face_pretrain_epochs,
                                  lr=model_cfg.face_pretrain_lr,
                                  seed=seed)
    state = encoder.state_dict()
    write_atomic(path, lambda f: torch.save({"state_dict": state, "stats": stats}, f))
    return state, stats
