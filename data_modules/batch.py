"""The batch the model sees: one typed structure, documented in one place.

Shapes use B = clips in the batch, S/Ta/Tv = padded lengths, K = face frames per clip.
Sensitive attributes live in a separate `Sensitive` object. Label-free (indirect) training
uses a loader that never builds it, so `Batch.sensitive` is None and reading it raises.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from data_modules.schema import SENSITIVE

SENSITIVE_KEYS = tuple(SENSITIVE)


class SensitiveAccessError(RuntimeError):
    """Raised when label-free training code tries to read gender or ethnicity."""


@dataclass
class Sensitive:
    gender: torch.Tensor  # [B] long, -1 unknown
    ethnicity: torch.Tensor  # [B] long, -1 unknown

    def to(self, device) -> Sensitive:
        return Sensitive(self.gender.to(device), self.ethnicity.to(device))


@dataclass
class Batch:
    text: torch.Tensor  # [B, S, 384] float: sentence embeddings
    text_mask: torch.Tensor  # [B, S] bool: True = real sentence
    audio: torch.Tensor  # [B, Ta, Da] float: acoustic feature frames
    audio_mask: torch.Tensor  # [B, Ta] bool
    video: torch.Tensor  # [B, Tv, 3, H, W] float in [0, 1]
    video_mask: torch.Tensor  # [B, Tv] bool
    faces: torch.Tensor  # [B, K, 3, Hf, Wf] float in [0, 1], for the face discriminator
    label: torch.Tensor  # [B] float hireability in [0, 1]
    merit: torch.Tensor  # [B] float (NaN where the source has no ground truth)
    identity: torch.Tensor  # [B] long: index of the person in this batch's source split
    clip_id: list[str]
    _sensitive: Sensitive | None = None
    face_embedding: torch.Tensor | None = None  # [B, K, E] float: precomputed descriptors

    @property
    def sensitive(self) -> Sensitive:
        if self._sensitive is None:
            raise SensitiveAccessError(
                "this batch carries no sensitive attributes (label-free training); "
                "only probes, fairness metrics and the label baseline may read them"
            )
        return self._sensitive

    @property
    def has_sensitive(self) -> bool:
        return self._sensitive is not None

    def __len__(self) -> int:
        return self.label.shape[0]

    def to(self, device) -> Batch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to(device) if hasattr(v, "to") else v
        return Batch(**out)
