import math

import numpy as np
import pytest
import torch

from data_modules.features.audio import (
    AUDIO_DIM,
    AUDIO_FEATURE_NAMES,
    ENERGY_INDEX,
    PITCH_INDEX,
    VOICING_INDEX,
    audio_features,
    pitch_hz,
)

SR = 16000


def harmonic(f0: float, seconds: float = 2.0, amp: float = 0.1, seed: int = 0) -> torch.Tensor:
    """A voiced-like tone: harmonics with a 1/k roll-off plus a little noise."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    x = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 30) if k * f0 < 5000)
    g = torch.Generator().manual_seed(seed)
    return (amp * x / x.abs().max() + 0.002 * torch.randn(len(t), generator=g)).float()


def test_shape_dtype_and_frame_rate():
    feats = audio_features(harmonic(150.0, seconds=4.0))
    assert feats.dtype == torch.float32
    assert feats.shape[1] == AUDIO_DIM == len(AUDIO_FEATURE_NAMES)
    assert 99 <= feats.shape[0] <= 102  # 25 frames per second
    assert torch.isfinite(feats).all()
    # roughly standardised scale: nothing wildly large for a normal-level signal
    assert feats.abs().max() < 10


@pytest.mark.parametrize("signal", [torch.zeros(SR), torch.zeros(100), 1e-3 * torch.randn(SR)])
def test_silence_short_and_noise_are_finite(signal):
    feats = audio_features(signal)
    assert feats.shape[0] >= 1 and feats.shape[1] == AUDIO_DIM
    assert torch.isfinite(feats).all()


def test_rejects_multichannel():
    with pytest.raises(ValueError, match="1-D"):
        audio_features(torch.zeros(2, SR))


def test_pitch_tracks_f0_and_is_ordered():
    low = audio_features(harmonic(120.0))
    high = audio_features(harmonic(220.0))
    low_hz = float(np.nanmedian(pitch_hz(low).numpy()))
    high_hz = float(np.nanmedian(pitch_hz(high).numpy()))
    assert low_hz == pytest.approx(120.0, rel=0.03)
    assert high_hz == pytest.approx(220.0, rel=0.03)
    assert low[:, PITCH_INDEX].median() < high[:, PITCH_INDEX].median()


def test_voicing_separates_tone_from_noise():
    tone = audio_features(harmonic(180.0))[:, VOICING_INDEX].mean()
    noise = audio_features(0.05 * torch.randn(2 * SR, generator=torch.Generator().manual_seed(1)))
    assert tone > 0.5
    assert noise[:, VOICING_INDEX].mean() < tone - 0.5
    assert (noise[:, PITCH_INDEX] == 0).float().mean() > 0.8  # unvoiced frames carry no pitch


def test_energy_follows_level():
    quiet = audio_features(harmonic(150.0, amp=0.01))[:, ENERGY_INDEX].mean()
    loud = audio_features(harmonic(150.0, amp=0.1))[:, ENERGY_INDEX].mean()
    # 20 dB louder is +1.0 in the (dB + 40) / 20 scale
    assert float(loud - quiet) == pytest.approx(1.0, abs=0.1)
