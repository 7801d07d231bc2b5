"""The multimodal hireability scorer: three encoders, a fusion step giving h, a score head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fair_lightning.models.encoders import AudioEncoder, TextEncoder, VideoEncoder

# The representations that probes audit; `fused` is h, the one adversaries protect;
# `erased` is h after the erasure stage at h's full width, `head` the few directions of it
# the refitted head reads (with erasure.head_dims > 0), `score` the prediction alone, and
# `proxy` the face embedding the face adversary uses in place of the sensitive labels.
BRANCHES = ("text", "audio", "video")  # the modality branches, each read by the audit
SCORER_REPRESENTATIONS = (*BRANCHES, "fused")
REPRESENTATIONS = (*SCORER_REPRESENTATIONS, "erased", "head", "score", "proxy")


@dataclass
class ScorerOutput:
    score: torch.Tensor  # [B] in [0, 1]
    reps: dict[str, torch.Tensor]  # name -> [B, d], keys = REPRESENTATIONS

    @property
    def h(self) -> torch.Tensor:
        return self.reps["fused"]


class MultimodalScorer(nn.Module):
    def __init__(self, *, text_dim: int, audio_dim: int, hidden_dim: int, fused_dim: int,
                 dropout: float, audio_encoder: str, video_channels: int):
        super().__init__()
        self.text = TextEncoder(text_dim, hidden_dim)
        self.audio = AudioEncoder(audio_dim, hidden_dim, audio_encoder)
        self.video = VideoEncoder(video_channels, hidden_dim)
        self.fusion = nn.Sequential(
            nn.Linear(3 * hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, fused_dim), nn.GELU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(fused_dim, 1)

    def forward(self, batch) -> ScorerOutput:
        reps = {
            "text": self.text(batch.text, batch.text_mask),
            "audio": self.audio(batch.audio, batch.audio_mask),
            "video": self.video(batch.video, batch.video_mask),
        }
        reps["fused"] = self.fusion(torch.cat([reps["text"], reps["audio"], reps["video"]], -1))
        score = torch.sigmoid(self.head(self.dropout(reps["fused"]))).squeeze(-1)
        return ScorerOutput(score=score, reps=reps)
