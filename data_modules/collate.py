"""Collate variable-length clip records into a padded, masked `Batch`."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from data_modules.batch import SENSITIVE_KEYS, Batch, Sensitive


def strip_sensitive(record: dict) -> dict:
    """Dataset transform for label-free training: the record loses gender and ethnicity."""
    return {k: v for k, v in record.items() if k not in SENSITIVE_KEYS}


def identity_code(identity: str) -> int:
    # stable across processes (unlike hash()); a collision only merges two people, which
    # can only remove negatives, never create a same-person negative
    return zlib.crc32(identity.encode("utf-8"))


def pad_sequences(seqs: Sequence[np.ndarray], dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [T_i, ...] arrays into [B, T_max, ...] with a [B, T_max] bool mask (True = real)."""
    lengths = [len(s) for s in seqs]
    t_max = max(max(lengths), 1)
    tail = seqs[0].shape[1:]
    out = torch.zeros((len(seqs), t_max, *tail), dtype=dtype)
    mask = torch.zeros((len(seqs), t_max), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(np.asarray(s)).to(dtype)
        mask[i, : len(s)] = True
    return out, mask


def collate_records(records: Sequence[dict]) -> Batch:
    if not records:
        raise ValueError("cannot collate an empty list of records")
    for r in records:
        if len(r["text"]) == 0 and len(r["audio"]) == 0 and len(r["video"]) == 0:
            raise ValueError(f"clip {r['clip_id']!r} has no text, audio or video frames")
    k = {r["faces"].shape for r in records}
    if len(k) > 1:
        raise ValueError(f"face sets differ in shape within a batch: {sorted(k)} "
                         f"(clips {[r['clip_id'] for r in records][:4]}...)")
    text, text_mask = pad_sequences([r["text"] for r in records])
    audio, audio_mask = pad_sequences([r["audio"] for r in records])
    video, video_mask = pad_sequences([r["video"] for r in records], dtype=torch.uint8)
    faces = torch.as_tensor(np.stack([r["faces"] for r in records]))
    sensitive = None
    if all(key in records[0] for key in SENSITIVE_KEYS):
        sensitive = Sensitive(
            gender=torch.tensor([int(r["gender"]) for r in records], dtype=torch.long),
            ethnicity=torch.tensor([int(r["ethnicity"]) for r in records], dtype=torch.long),
        )
    emb = None
    if all("face_embedding" in r for r in records):
        emb = torch.as_tensor(np.stack([r["face_embedding"] for r in records])).float()
    return Batch(
        face_embedding=emb,
        text=text, text_mask=text_mask,
        audio=audio, audio_mask=audio_mask,
        video=video.float().div_(255.0), video_mask=video_mask,
        faces=faces.float().div_(255.0),
        label=torch.tensor([float(r["label"]) for r in records], dtype=torch.float32),
        merit=torch.tensor([float(r.get("merit", float("nan"))) for r in records],
                           dtype=torch.float32),
        identity=torch.tensor([identity_code(r["identity"]) for r in records], dtype=torch.long),
        clip_id=[r["clip_id"] for r in records],
        _sensitive=sensitive,
    )
