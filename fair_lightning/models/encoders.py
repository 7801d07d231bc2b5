"""Per-modality encoders. Each maps a padded, masked sequence to one vector per clip."""

from __future__ import annotations

import torch
from torch import nn


class AttentionPool(nn.Module):
    """Masked attention pooling: a = softmax_t(w·x_t) over real steps; out = Σ_t a_t x_t."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        # a clip with no step in this modality pools to zeros instead of NaN
        empty = ~mask.any(dim=1, keepdim=True)
        weights = torch.softmax(logits.masked_fill(empty, 0.0), dim=1) * (~empty)
        return torch.einsum("bt,btd->bd", weights, x)


class TextEncoder(nn.Module):
    """Sentence embeddings [B, S, 384] -> [B, hidden] (projection + attention pooling)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU())
        self.pool = AttentionPool(hidden)

    def forward(self, x, mask):
        return self.pool(self.proj(x), mask)


class AudioEncoder(nn.Module):
    """Acoustic frames [B, T, Da] -> [B, hidden]: bidirectional GRU or temporal conv, then
    attention pooling."""

    def __init__(self, in_dim: int, hidden: int, kind: str = "gru"):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(in_dim)
        if kind == "gru":
            self.rnn = nn.GRU(in_dim, hidden // 2, batch_first=True, bidirectional=True)
        elif kind == "conv":
            self.conv = nn.Sequential(
                nn.Conv1d(in_dim, hidden, 5, padding=2), nn.GELU(),
                nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU(),
            )
        else:
            raise ValueError(f"unknown audio encoder {kind!r}")
        self.pool = AttentionPool(hidden)

    def forward(self, x, mask):
        x = self.norm(x) * mask.unsqueeze(-1)
        if self.kind == "gru":
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                       enforce_sorted=False)
            out, _ = self.rnn(packed)
            y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                    total_length=x.shape[1])
        else:
            y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.pool(y, mask)


def small_cnn(channels: int, out_dim: int) -> nn.Sequential:
    """Frame CNN for small face crops: three stride-2 blocks, global average pool."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.BatchNorm2d(4 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, out_dim),
    )


class VideoEncoder(nn.Module):
    """Face track [B, Tv, 3, H, W] -> [B, hidden]: per-frame CNN, masked mean over frames."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.cnn = small_cnn(channels, hidden)

    def forward(self, x, mask):
        b, t = x.shape[:2]
        frames = self.cnn(x.flatten(0, 1)).view(b, t, -1)
        m = mask.unsqueeze(-1).to(frames.dtype)
        return (frames * m).sum(1) / m.sum(1).clamp(min=1.0)
