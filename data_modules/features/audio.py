"""Frame-level acoustic features for 16 kHz mono speech (synthetic and real clips alike).

One row every 40 ms (25 frames/s), AUDIO_DIM = 24 columns:

| cols  | feature | scaling (fixed, so that between-speaker differences survive) |
|-------|---------|------------------------------------------------|
| 0-19  | MFCC c1..c20 of a 40-band log-mel spectrum (c0 dropped: energy covers it) | / 5 |
| 20    | log-energy, 10*log10(mean x^2) of the frame | (dB + 40) / 20 |
| 21    | delta log-energy (rate of loudness change) | same units |
| 22    | log-pitch, 2*log2(f0 / 150 Hz) on voiced frames, 0 on unvoiced ones | ~[-1, 1] for 100-300 Hz |
| 23    | voicing strength, the normalised autocorrelation peak | 2*v - 1, in [-1, 1] |

Pitch is an autocorrelation estimate per frame (lags for 60-400 Hz, parabolic refinement);
the biased autocorrelation favours the true period over its multiples.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

SAMPLE_RATE = 16000
HOP_SECONDS = 0.04
WIN_SECONDS = 0.05
N_MFCC = 20
N_MELS = 40
F0_MIN, F0_MAX = 60.0, 400.0
F0_REF = 150.0
VOICING_THRESHOLD = 0.45

MFCC_SLICE = slice(0, N_MFCC)
ENERGY_INDEX = N_MFCC
DELTA_ENERGY_INDEX = N_MFCC + 1
PITCH_INDEX = N_MFCC + 2
VOICING_INDEX = N_MFCC + 3
AUDIO_DIM = N_MFCC + 4
AUDIO_FEATURE_NAMES = ([f"mfcc{i}" for i in range(1, N_MFCC + 1)]
                       + ["log_energy", "delta_log_energy", "log_pitch", "voicing"])

_MFCC_CACHE: dict[int, AT.MFCC] = {}


def _mfcc_transform(sample_rate: int) -> AT.MFCC:
    t = _MFCC_CACHE.get(sample_rate)
    if t is None:
        win = round(WIN_SECONDS * sample_rate)
        t = AT.MFCC(sample_rate=sample_rate, n_mfcc=N_MFCC + 1, log_mels=True,
                    melkwargs={"n_fft": 1 << (win - 1).bit_length(), "win_length": win,
                               "hop_length": round(HOP_SECONDS * sample_rate),
                               "n_mels": N_MELS, "f_min": 50.0,
                               "f_max": min(7600.0, sample_rate / 2), "center": True})
        _MFCC_CACHE[sample_rate] = t
    return t


def _frames(x: torch.Tensor, sample_rate: int, n_frames: int) -> torch.Tensor:
    """Frames centred like the spectrogram's (center=True), [T, win]."""
    win = round(WIN_SECONDS * sample_rate)
    hop = round(HOP_SECONDS * sample_rate)
    padded = torch.nn.functional.pad(x[None, None], (win // 2, win // 2 + hop), mode="constant")[0, 0]
    fr = padded.unfold(0, win, hop)
    return fr[:n_frames]


def _pitch(frames: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame f0 (Hz) and voicing strength in [0, 1] from the autocorrelation."""
    win = frames.shape[1]
    fr = frames - frames.mean(dim=1, keepdim=True)
    fr = fr * torch.hann_window(win, dtype=fr.dtype)
    n_fft = 1 << (2 * win - 1).bit_length()
    spec = torch.fft.rfft(fr, n=n_fft)
    ac = torch.fft.irfft(spec.real ** 2 + spec.imag ** 2, n=n_fft)[:, :win]
    # Divide by the window's own autocorrelation so the peak height is a true correlation.
    w = torch.hann_window(win, dtype=fr.dtype)
    wspec = torch.fft.rfft(w, n=n_fft)
    wac = torch.fft.irfft(wspec.real ** 2 + wspec.imag ** 2, n=n_fft)[:win]
    lo = int(sample_rate / F0_MAX)
    hi = min(int(sample_rate / F0_MIN) + 1, win // 2)
    r0 = ac[:, :1].clamp_min(1e-12)
    norm = ac / r0 / (wac / wac[0]).clamp_min(1e-3)[None]
    # Mild taper toward long lags: avoids picking 2T, 3T when the true period T fits too.
    taper = 1.0 - 0.1 * torch.arange(win, dtype=fr.dtype) / hi
    score = norm[:, lo:hi] * taper[lo:hi]
    best = score.argmax(dim=1)
    lag = best + lo
    # Parabolic interpolation around the peak for sub-sample precision.
    idx = lag.clamp(lo + 1, hi - 2)
    y0 = norm.gather(1, (idx - 1)[:, None])[:, 0]
    y1 = norm.gather(1, idx[:, None])[:, 0]
    y2 = norm.gather(1, (idx + 1)[:, None])[:, 0]
    denom = y0 - 2 * y1 + y2
    shift = torch.where(denom.abs() > 1e-9, 0.5 * (y0 - y2) / denom, torch.zeros_like(denom))
    refined = idx.to(fr.dtype) + shift.clamp(-1, 1)
    f0 = sample_rate / refined
    voicing = norm.gather(1, lag[:, None])[:, 0].clamp(0, 1)
    silent = frames.pow(2).mean(dim=1) < 1e-7
    voicing = torch.where(silent, torch.zeros_like(voicing), voicing)
    return f0, voicing


@torch.no_grad()
def audio_features(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Frame-level features of a 1-D waveform -> float32 [T, AUDIO_DIM], T ~ 25 per second."""
    x = torch.as_tensor(waveform).to(torch.float32)
    if x.dim() != 1:
        raise ValueError(f"expected a 1-D mono waveform, got shape {tuple(x.shape)}")
    min_len = round(WIN_SECONDS * sample_rate)
    if x.numel() < min_len:
        x = torch.nn.functional.pad(x, (0, min_len - x.numel()))
    mfcc = _mfcc_transform(sample_rate)(x).T  # [T, N_MFCC + 1]
    n = mfcc.shape[0]
    frames = _frames(x, sample_rate, n)
    energy_db = 10.0 * torch.log10(frames.pow(2).mean(dim=1) + 1e-10)
    energy = (energy_db + 40.0) / 20.0
    delta = AF.compute_deltas(energy[None, None], win_length=5)[0, 0]
    f0, voicing = _pitch(frames, sample_rate)
    voiced = voicing >= VOICING_THRESHOLD
    log_pitch = torch.where(voiced, 2.0 * torch.log2(f0 / F0_REF), torch.zeros_like(f0))
    feats = torch.cat([mfcc[:, 1:] / 5.0, energy[:, None], delta[:, None],
                       log_pitch[:, None], (2.0 * voicing - 1.0)[:, None]], dim=1)
    return torch.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0).contiguous()


def pitch_hz(features: torch.Tensor) -> torch.Tensor:
    """Invert the log-pitch column to Hz (NaN on unvoiced frames)."""
    f = features[..., PITCH_INDEX].float()
    v = features[..., VOICING_INDEX].float() >= 2 * VOICING_THRESHOLD - 1
    hz = F0_REF * torch.pow(2.0, f / 2.0)
    return torch.where(v, hz, torch.full_like(hz, float("nan")))
