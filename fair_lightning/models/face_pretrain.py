"""A label-free face encoder for the discriminator: pretrained to recognise candidates
across their clips.

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

from data_modules.files import atomic_write
from data_modules.progress import Progress
from fair_lightning.models import FaceEncoder
from fair_lightning.models.adversaries import frames_to_float, frames_to_uint8
from fair_lightning.ops.runtime import wait_for

log = logging.getLogger(__name__)

BATCH_SIZE = 128  # images per step: 64 people, two clips each
TEMPERATURE = 0.1  # NT-Xent temperature, in SimCLR's and SupCon's usual range
HOLDOUT_PEOPLE = 0.2  # share of people kept out to choose the epoch: new people, as in val/test


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
            images.append(frames_to_uint8(frames))
            who = people.setdefault(int(batch.identity[i]), len(people))
            person.append(torch.full((len(frames),), who, dtype=torch.long))
            clip.append(torch.full((len(frames),), n_clips, dtype=torch.long))
            n_clips += 1
    if not images:
        raise ValueError("no clips to pretrain the face encoder on")
    return torch.cat(images), torch.cat(person), torch.cat(clip)


def _clips_by_person(person: torch.Tensor, clip: torch.Tensor, keep: torch.Tensor):
    """{person: [image indices of each of their clips]} for kept people with >= 2 clips."""
    out: dict[int, list[torch.Tensor]] = {}
    for p in person[keep].unique().tolist():
        idx = torch.nonzero(keep & (person == p)).squeeze(1)
        clips = [idx[clip[idx] == c] for c in clip[idx].unique()]
        if len(clips) >= 2:
            out[p] = clips
    return out


def holdout_people(person: torch.Tensor, clip: torch.Tensor, fraction: float,
                   seed: int = 0) -> torch.Tensor:
    """Mask of the images of a random `fraction` (at least 2) of the people with >= 2 clips."""
    pairable = list(_clips_by_person(person, clip, torch.ones_like(person, dtype=torch.bool)))
    if len(pairable) < 4:
        raise ValueError("face pretraining needs people with at least two clips "
                         f"(4 or more such people; found {len(pairable)})")
    gen = torch.Generator().manual_seed(seed)
    n = max(2, round(fraction * len(pairable)))
    chosen = torch.tensor(pairable)[torch.randperm(len(pairable), generator=gen)[:n]]
    return torch.isin(person, chosen)


def cross_clip_retrieval(z: torch.Tensor, person: torch.Tensor, clip: torch.Tensor) -> float:
    """Share of images whose nearest image from *another clip* shows the same person
    (cosine similarity): a clip's background or lighting cannot help."""
    z = F.normalize(z, dim=1)
    sim = (z @ z.T).masked_fill(clip[:, None] == clip[None, :], float("-inf"))
    return float((person[sim.argmax(1)] == person).float().mean())


def pretrain_identity(encoder: FaceEncoder, images: torch.Tensor, person: torch.Tensor,
                      clip: torch.Tensor, *, epochs: int, lr: float, batch_size: int = BATCH_SIZE,
                      seed: int = 0) -> dict[str, float]:
    """Train `encoder.cnn` contrastively across clips: each step takes one image from each
    of two clips of up to batch_size/2 people, and each image must pick its partner out of
    the batch (NT-Xent). The partner never shares the clip's background, clothes or light,
    so only what stays with the person helps; a classifier over people can instead
    remember each training clip's background. Keeps the epoch with the best cross-clip
    retrieval on held-out people; returns that accuracy and the epoch."""
    gen = torch.Generator().manual_seed(seed)
    held = holdout_people(person, clip, HOLDOUT_PEOPLE, seed)
    train = _clips_by_person(person, clip, ~held)
    people = list(train)
    if len(people) < 2:
        raise ValueError("face pretraining needs people with at least two clips")
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=1e-4)
    per_step = min(batch_size // 2, len(people))
    steps = max(1, int((~held).sum()) // (2 * per_step))
    best = (-1.0, 0, None)

    def retrieval() -> float:
        encoder.eval()
        with torch.no_grad():
            x = frames_to_float(images[held])
            z = torch.cat([encoder.cnn(c) for c in x.split(512)]).cpu()
        return cross_clip_retrieval(z, person[held], clip[held])

    def pick(idx: torch.Tensor) -> torch.Tensor:
        return idx[torch.randint(len(idx), (1,), generator=gen)]

    bar = Progress(epochs, "face encoder pretraining", unit="epochs", logger=log)
    for epoch in range(1, epochs + 1):
        encoder.train()
        for _ in range(steps):
            rows = []
            for i in torch.randperm(len(people), generator=gen)[:per_step].tolist():
                clips = train[people[i]]
                a, b = torch.randperm(len(clips), generator=gen)[:2].tolist()
                rows += [pick(clips[a]), pick(clips[b])]
            z = F.normalize(encoder.cnn(frames_to_float(images[torch.cat(rows)])), dim=1)
            sim = (z @ z.T / TEMPERATURE).fill_diagonal_(float("-inf"))
            partner = torch.arange(len(z), device=z.device) ^ 1  # rows in pairs: 0-1, 2-3, ...
            loss = F.cross_entropy(sim, partner)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = retrieval()
        if acc > best[0]:
            best = (acc, epoch, {k: v.clone() for k, v in encoder.state_dict().items()})
        bar.update(note=f"held-out retrieval {acc:.3f}")
    bar.close()
    encoder.load_state_dict(best[2])
    log.info("face encoder: cross-clip retrieval %.3f on %d held-out people (epoch %d)",
             best[0], int(person[held].unique().numel()), best[1])
    return {"face_pretrain/heldout_retrieval_acc": round(best[0], 4),
            "face_pretrain/best_epoch": best[1]}


def identity_face_encoder(model_cfg, loader, cache_dir: Path, *, data_key: str,
                          seed: int, device: str = "cpu", rank: int = 0,
                          timeout_s: float = 3600) -> tuple[dict, dict[str, float]]:
    """State dict of an identity-pretrained FaceEncoder, cached in `cache_dir` (it is a pure
    function of the data, the settings and the seed). Rank 0 pretrains it, on `device`;
    the other ranks wait for the cached file instead of each pretraining their own."""
    settings = {"data": data_key, "face_dim": model_cfg.face_dim, "seed": seed,
                "objective": "cross_clip_nt_xent", "temperature": TEMPERATURE,
                "holdout_people": HOLDOUT_PEOPLE, "batch_size": BATCH_SIZE,
                "epochs": model_cfg.face_pretrain_epochs, "lr": model_cfg.face_pretrain_lr}
    if device != "cpu":  # other arithmetic, other weights: a cache of its own
        settings["device"] = str(device)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"face_encoder-{key}.pt"
    if rank != 0:
        wait_for(path, "the pretrained face encoder", timeout_s)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["state_dict"], saved["stats"]
    # own RNG stream: the main run must not depend on whether the cache already existed
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = FaceEncoder(model_cfg.face_dim)
        images, person, clip = collect_person_images(loader)
        stats = pretrain_identity(encoder.to(device), images.to(device), person, clip,
                                  epochs=model_cfg.face_pretrain_epochs,
                                  lr=model_cfg.face_pretrain_lr,
                                  seed=seed)
    state = {k: v.cpu() for k, v in encoder.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: torch.save({"state_dict": state, "stats": stats}, p))
    return state, stats
