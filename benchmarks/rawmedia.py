"""Tiny raw interview corpora (mp4 + annotations) with known ground truth.

Test and benchmark fixtures, not part of the installed package: the tests of the raw-media
sources, `make bench BENCH=preprocess` and the real-face corpus (`benchmarks/realface`) use
them. For tests and throughput measurements of the raw-video preprocessing path (PyAV decode,
Haar face detection, 16 kHz mono audio). Everything is drawn or synthesised here, no assets.

Video: a drawn frontal face (hair, brows, shaded eye sockets, nose bridge, mouth) on a
gradient background, with a smooth per-frame camera jitter, lighting drift and sensor noise;
the mouth opens with the speech envelope. The Haar cascade finds it in nearly every frame.
Audio: a voiced sawtooth source with a wandering f0, shaped by three formants and a syllable
envelope with pauses, plus a little noise.

Ground truth, with s = +1 for men (gender 1) and -1 for women (gender 0):
* identity (`identity_seed`): face width, hair length / colour / fringe, skin tone, eye
  spacing and height, brows, nose, mouth, formants, speaking rate, f0 jitter.
* gender, video (knob Lv = `video_gender`): face width * exp(0.06 Lv s), brow thickness
  * exp(0.2 Lv s), hair length = sigmoid(1.5 (z - 1.6 Lv s)).
* gender, audio (knob La = `audio_gender`): mean f0 = 158.7 Hz * exp(-0.28 La s + 0.08 z),
  i.e. ~120 Hz men / ~210 Hz women at La = 1 and the pooled 158.7 Hz for both at 0.
* clip nuisance (`clip_seed`): background, clothes, light direction, framing offsets and
  the jitter / intonation / syllable timing.
Random draws never depend on gender, so at a knob of 0 the two genders give identical media
for the same seeds.

Public: `write_clip` (one mp4), `make_chalearn_corpus` (ChaLearn First Impressions V2 layout,
Python 2 pickles), `make_manifest_corpus` (clips + manifest.csv) and `write_throughput_clips`
(15 s 1280x720 clips for timing).
"""

from __future__ import annotations

import csv
import io
import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from data_modules.files import atomic_write

# the voice and skin ground truth is the synthetic benchmark's, not a copy of it
from data_modules.sources.synthetic import (
    F0_GENDER_HALF_GAP,
    F0_PERSON_SD,
    F0_POOLED,
    SKIN_DARK,
    SKIN_LIGHT,
)

AUDIO_RATE = 44100  # like the original clips; consumers resample to 16 kHz
# mbtree off: with it, x264 output sometimes differed from run to run for identical frames
# (looks like a read of uninitialised memory; asm=0 or no lookahead also cured it)
X264_OPTIONS = {"preset": "veryfast", "crf": "23", "x264-params": "mbtree=0"}
X264_THREADS = 2
NOISE_SD = 2.0

_HAIR = np.array([[35.0, 25.0, 20.0], [70.0, 45.0, 25.0], [110.0, 75.0, 40.0],
                  [135.0, 100.0, 60.0], [55.0, 50.0, 50.0]])

# stream tags, so identity, clip and frame draws never share a generator
_T_ID, _T_CLIP, _T_AUDIO = 0x1D, 0xC1, 0xA0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class _Person:
    width: float  # face half-width / half-height
    hair_len: float  # 0 short .. 1 shoulder length
    hair_rgb: np.ndarray
    fringe: float
    skin_rgb: np.ndarray
    eye_sep: float
    eye_y: float
    brow: float
    nose: float
    mouth_w: float
    log_f0: float
    formants: np.ndarray
    rate: float


def _person(identity_seed: int, gender: int, video_gender: float, audio_gender: float) -> _Person:
    rng = np.random.default_rng([_T_ID, identity_seed])
    z = rng.standard_normal(12)
    s = 1.0 if gender == 1 else -1.0
    tone = float(np.clip(0.45 + 0.22 * z[3], 0.0, 1.0))
    return _Person(
        width=0.76 * math.exp(0.04 * z[0] + 0.06 * video_gender * s),
        hair_len=_sigmoid(1.5 * (z[1] - 1.6 * video_gender * s)),
        hair_rgb=_HAIR[int(rng.integers(len(_HAIR)))],
        fringe=float(np.clip(0.5 + 0.3 * z[2], 0.0, 1.0)),
        skin_rgb=(1 - tone) * SKIN_LIGHT + tone * SKIN_DARK,
        eye_sep=0.40 + 0.02 * z[4],
        eye_y=-0.17 + 0.02 * z[5],
        brow=math.exp(0.15 * z[6] + 0.2 * video_gender * s),
        nose=1.0 + 0.08 * z[7],
        mouth_w=0.33 + 0.03 * z[8],
        log_f0=math.log(F0_POOLED) - audio_gender * F0_GENDER_HALF_GAP * s + F0_PERSON_SD * z[9],
        formants=np.array([650.0, 1500.0, 2600.0]) * np.exp(0.07 * rng.standard_normal(3)),
        rate=4.0 * math.exp(0.1 * z[10]),
    )


@dataclass
class _Clip:
    bg_top: np.ndarray
    bg_bottom: np.ndarray
    clothes: np.ndarray
    light: float  # lateral light gradient on the face
    dx: float  # framing offsets, in frame heights
    dy: float
    scale: float
    seed: int


def _clip(clip_seed: int) -> _Clip:
    rng = np.random.default_rng([_T_CLIP, clip_seed])
    base = rng.uniform(40, 215, 3)
    return _Clip(
        bg_top=np.clip(base + rng.normal(0, 15, 3), 0, 255),
        bg_bottom=np.clip(base * rng.uniform(0.6, 0.95), 0, 255),
        clothes=rng.uniform(20, 200, 3),
        light=float(rng.uniform(-0.12, 0.12)),
        dx=float(rng.normal(0, 0.05)),
        dy=float(rng.normal(0, 0.02)),
        scale=float(math.exp(rng.normal(0, 0.05))),
        seed=int(rng.integers(2**31)),
    )


class _Canvas:
    """Float RGB image with antialiased soft-edged ellipses painted on bounding-box crops."""

    def __init__(self, img: np.ndarray, px: float):
        self.img = img
        self.px = px  # pixels per unit (one unit = one frame height)

    def ellipse(self, cx, cy, ax, ay, colour, *, feather=1.0, angle=0.0, alpha=1.0,
                shade=None, clip_y=None):
        """Paint an ellipse (unit coordinates). feather: edge width in pixels. shade(r, x, y)
        -> per-pixel multiplier from the normalised radius; clip_y keeps only rows above it."""
        h, w = self.img.shape[:2]
        p = self.px
        ext = max(ax, ay) * p + 2 * feather + 2
        x0, x1 = max(int(cx * p - ext), 0), min(int(cx * p + ext) + 1, w)
        y0, y1 = max(int(cy * p - ext), 0), min(int(cy * p + ext) + 1, h)
        if x0 >= x1 or y0 >= y1:
            return
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        xs = (xs + 0.5) / p - cx
        ys = (ys + 0.5) / p - cy
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            xs, ys = c * xs + s * ys, -s * xs + c * ys
        r = np.sqrt((xs / ax) ** 2 + (ys / ay) ** 2)
        # signed distance to the edge, approximately, in pixels
        m = np.clip((1.0 - r) * min(ax, ay) * p / feather + 0.5, 0.0, 1.0) * alpha
        if clip_y is not None:
            m = m * np.clip((clip_y - (ys + cy)) * p / feather + 0.5, 0.0, 1.0)
        col = np.asarray(colour, np.float32)[None, None, :]
        if shade is not None:
            col = col * shade(r, xs, ys)[..., None]
        crop = self.img[y0:y1, x0:x1]
        crop += (col - crop) * m[..., None]


def _draw_face(cv: _Canvas, p: _Person, cx: float, cy: float, b: float, light: float) -> dict:
    """Head at (cx, cy) with half-height b (units); returns mouth geometry for animation."""
    a = b * p.width
    skin = p.skin_rgb
    hair = p.hair_rgb
    # skull / hair cap, down to ear level
    cv.ellipse(cx, cy - 0.12 * b, 1.1 * a, 1.0 * b, hair, feather=1.5, clip_y=cy + 0.05 * b)
    # ears
    for side in (-1, 1):
        cv.ellipse(cx + side * 0.97 * a, cy - 0.05 * b, 0.14 * a, 0.22 * b, skin * 0.85)

    def face_shade(r, x, y):
        return (1.0 - 0.3 * r ** 4) * (1.0 + light * x / a) * (1.0 - 0.08 * np.clip(y / b, 0, 1))

    cv.ellipse(cx, cy, a, b, skin, feather=1.5, shade=face_shade)
    # fringe: hair over the top of the forehead
    hairline = cy - b * (0.76 - 0.14 * p.fringe)  # keeps a bright forehead above the brows
    cv.ellipse(cx, cy - 0.12 * b, 1.1 * a, 1.0 * b, hair, feather=1.5, clip_y=hairline)
    ey = cy + p.eye_y * b
    # brows darker than the hair and never lighter than mid-brown: blond brows lose the face
    brow_rgb = np.minimum(hair * 0.6, (70.0, 50.0, 35.0))
    # darker band over the eyes (brow ridge shadow), as on a lit real face
    cv.ellipse(cx, ey - 0.02 * b, 0.85 * a, 0.16 * b, skin * 0.8, feather=3.0, alpha=0.7)
    for side in (-1, 1):
        ex = cx + side * p.eye_sep * a
        cv.ellipse(ex, ey + 0.3 * b, 0.28 * a, 0.14 * b, skin * 1.08, feather=4.0)  # cheek
        cv.ellipse(ex, ey, 0.27 * a, 0.13 * b, skin * 0.56, feather=3.0)  # socket
        cv.ellipse(ex, ey, 0.17 * a, 0.06 * b, (200, 195, 190), feather=1.0)  # sclera
        cv.ellipse(ex, ey, 0.075 * b, 0.06 * b, (55, 40, 30), feather=1.0)  # iris
        cv.ellipse(ex, ey - 0.055 * b, 0.18 * a, 0.018 * b, (40, 30, 25), feather=1.0)  # lid
        cv.ellipse(ex, ey - 0.2 * b, 0.2 * a, 0.035 * b * p.brow, brow_rgb, feather=1.0,
                   angle=-side * 0.12)  # brow
    # nose: a bright bridge between the eyes, a shaded tip and nostrils
    nose_y = cy + 0.22 * b * p.nose
    cv.ellipse(cx, (ey + nose_y) / 2, 0.08 * a, (nose_y - ey) / 2 + 0.04 * b, skin * 1.1,
               feather=2.0)
    cv.ellipse(cx, nose_y + 0.02 * b, 0.16 * a, 0.06 * b, skin * 0.8, feather=2.0)
    cv.ellipse(cx, nose_y - 0.01 * b, 0.09 * a, 0.05 * b, skin * 1.05, feather=1.5)
    for side in (-1, 1):
        cv.ellipse(cx + side * 0.07 * a, nose_y + 0.035 * b, 0.035 * a, 0.02 * b, skin * 0.45)
    mouth = {"x": cx, "y": cy + 0.5 * b, "w": p.mouth_w * a, "h": 0.045 * b}
    lips = skin * np.array([0.82, 0.55, 0.55])
    cv.ellipse(mouth["x"], mouth["y"], mouth["w"], mouth["h"] * 1.6, lips, feather=1.5)
    cv.ellipse(mouth["x"], mouth["y"], mouth["w"] * 0.9, 0.01 * b, (50, 25, 25), feather=1.0)
    return mouth


def _base_frame(p: _Person, c: _Clip, width: int, height: int, face: bool):
    """The static frame of a clip (before per-frame jitter), the mouth geometry and the head
    centre, both in pixels."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    img = (c.bg_top * (1 - ys) + c.bg_bottom * ys).astype(np.float32)
    img = np.broadcast_to(img, (height, width, 3)).copy()
    cv = _Canvas(img, float(height))
    mid = width / height / 2 + c.dx
    b = 0.28 * c.scale
    cy = 0.46 + c.dy
    # shoulders and torso
    cv.ellipse(mid, cy + 2.05 * b, 2.0 * b, 1.05 * b, c.clothes, feather=2.0)
    if face:
        a = b * p.width
        if p.hair_len > 0.1:  # long hair falls behind the neck and onto the shoulders
            bottom = cy + b * (0.1 + 1.5 * p.hair_len)
            top = cy - 1.1 * b
            cv.ellipse(mid, (top + bottom) / 2, 1.15 * a, (bottom - top) / 2, p.hair_rgb * 0.9,
                       feather=2.0)
        cv.ellipse(mid, cy + 0.95 * b, 0.4 * a, 0.4 * b, p.skin_rgb * 0.78, feather=2.0)  # neck
        mouth = _draw_face(cv, p, mid, cy, b, c.light)
    else:
        mouth = None
        # no head: a lamp-like object beside the torso keeps the scene non-trivial
        cv.ellipse(mid + 0.1, cy - 0.05, 0.14, 0.09, c.clothes[::-1], feather=2.0)
        cv.ellipse(mid + 0.1, cy + 0.2, 0.02, 0.2, (90, 90, 90), feather=1.5)
    img = np.clip(cv.img, 0, 255).astype(np.uint8)
    if mouth is not None:
        mouth = {k: v * height for k, v in mouth.items()}
    return img, mouth, (mid * height, cy * height)


def _smooth_walk(rng: np.random.Generator, n: int, sd: float, coef: float = 0.85) -> np.ndarray:
    """AR(1) path with stationary sd `sd`: slow drift rather than independent per-frame jumps."""
    e = rng.standard_normal(n) * sd * math.sqrt(1 - coef ** 2)
    out = np.empty(n)
    x = rng.standard_normal() * sd
    for i in range(n):
        x = coef * x + e[i]
        out[i] = x
    return out


def _render_frames(*, seconds, fps, width, height, gender, identity_seed, clip_seed,
                   video_gender, face, envelope=None, person=None):
    p = person or _person(identity_seed, gender, video_gender, 0.0)
    c = _clip(clip_seed)
    base, mouth, centre = _base_frame(p, c, width, height, face)
    n = max(1, round(seconds * fps))
    rng = np.random.default_rng([_T_CLIP, c.seed, 1])
    dx = _smooth_walk(rng, n, 0.012 * height)
    dy = _smooth_walk(rng, n, 0.008 * height)
    ang = _smooth_walk(rng, n, 1.5)
    sc = np.exp(_smooth_walk(rng, n, 0.015))
    gain = np.exp(_smooth_walk(rng, n, 0.04, 0.95))
    # fixed-pattern sensor noise, as saturating uint8 add / subtract parts; a fresh field per
    # frame would make the encoder spend most of its bits (and time) on the noise
    z = np.rint(rng.normal(0, NOISE_SD, (height, width, 3)))
    plus, minus = np.clip(z, 0, 255).astype(np.uint8), np.clip(-z, 0, 255).astype(np.uint8)
    levels = np.arange(256, dtype=np.float64)
    for i in range(n):  # head-centred camera shake: shift, roll and zoom
        m = cv2.getRotationMatrix2D(centre, float(ang[i]), float(sc[i]))
        m[0, 2] += dx[i]
        m[1, 2] += dy[i]
        frame = cv2.warpAffine(base, m, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        if mouth is not None:
            opening = 0.0 if envelope is None else float(envelope[i])
            mx, my = m @ np.array([mouth["x"], mouth["y"], 1.0])
            # a modest opening: a wide-open round mouth breaks the Haar detector
            axes = (mouth["w"] * 0.7 * sc[i], max(mouth["h"] * (0.3 + 0.9 * opening) * sc[i], 0.5))
            cv2.ellipse(frame, (round(mx * 16), round(my * 16)),
                        (round(axes[0] * 16), round(axes[1] * 16)), -float(ang[i]), 0, 360,
                        (45, 20, 20), -1, cv2.LINE_AA, 4)
        # lighting drift through a lookup table: far cheaper than float maths at 720p
        lut = np.clip(np.rint(levels * gain[i]), 0, 255).astype(np.uint8)
        frame = cv2.LUT(frame, lut)
        yield cv2.subtract(cv2.add(frame, plus), minus)


# ---------------------------------------------------------------------------------------------
# audio


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """Band-pass biquad (0 dB peak) at `freq` with bandwidth `bw`: one formant."""
    from scipy.signal import lfilter

    w0 = 2 * math.pi * min(freq, 0.45 * sr) / sr
    alpha = math.sin(w0) * bw / (2 * freq)
    b = np.array([alpha, 0.0, -alpha])
    a = np.array([1 + alpha, -2 * math.cos(w0), 1 - alpha])
    return lfilter(b / a[0], a / a[0], x)


def _syllables(p: _Person, clip_seed: int, seconds: float) -> list[tuple[float, float, float]]:
    """(onset s, duration s, loudness) per syllable; phrases separated by short pauses."""
    rng = np.random.default_rng([_T_AUDIO, clip_seed])
    out = []
    t = float(rng.uniform(0.05, 0.25))
    while t < seconds - 0.1:
        dur = float(rng.uniform(0.7, 1.3)) / p.rate
        out.append((t, min(dur, seconds - t), float(math.exp(rng.normal(0, 0.25)))))
        t += dur
        if rng.random() < 0.12:
            t += float(rng.uniform(0.15, 0.45))
    return out


def _envelope(syl, times: np.ndarray) -> np.ndarray:
    """Syllable loudness envelope (0..~1.5) at `times`: a raised-cosine bump per syllable."""
    env = np.zeros(len(times))
    for t0, dur, amp in syl:
        u = (times - t0) / (0.85 * dur)  # 15 % of each syllable is a closure
        inside = (u >= 0) & (u < 1)
        env[inside] += amp * np.sin(math.pi * u[inside]) ** 2
    return env


def _speech(p: _Person, clip_seed: int, seconds: float, sr: int) -> np.ndarray:
    """Float32 mono waveform: voiced syllables with intonation, formants, consonant noise."""
    rng = np.random.default_rng([_T_AUDIO, clip_seed, 1])
    n = round(seconds * sr)
    t = np.arange(n) / sr
    syl = _syllables(p, clip_seed, seconds)
    # intonation: a slow walk in semitones on a 100 ms grid, linearly interpolated
    grid = np.arange(0.0, seconds + 0.2, 0.1)
    semis = _smooth_walk(rng, len(grid), 1.5, 0.9)
    f0 = np.exp(p.log_f0 + np.interp(t, grid, semis) * math.log(2) / 12)
    phase = np.cumsum(f0) / sr + rng.random()
    source = 1.0 - 2.0 * (phase % 1.0)  # falling sawtooth: sharp closure, rich harmonics
    env = _envelope(syl, t)
    out = np.zeros(n)
    for t0, dur, _ in syl:  # each syllable gets its own vowel (formant shift)
        i0, i1 = int(t0 * sr), min(int((t0 + dur) * sr) + int(0.03 * sr), n)
        seg = source[i0:i1] * env[i0:i1]
        vowel = np.exp(rng.normal(0, 0.12, 3))
        voiced = sum(g * _resonator(seg, f, bw, sr) for g, f, bw in
                     zip((1.0, 0.5, 0.25), p.formants * vowel, (90.0, 110.0, 160.0), strict=True))
        out[i0:i1] += voiced
        if rng.random() < 0.4:  # a fricative onset: short burst of high-passed noise
            k = min(int(0.04 * sr), i1 - i0)
            burst = np.diff(rng.standard_normal(k + 1)) * 0.05 * np.hanning(k)
            out[i0:i0 + k] += burst
    out /= max(np.abs(out).max(), 1e-9)
    out = 0.5 * out + rng.normal(0, 3e-4, n)  # room noise, ~ -70 dBFS
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# clip writer


def write_clip(path: str | os.PathLike, *, seconds: float = 2.0, fps: float = 10,
               width: int = 160, height: int = 120, gender: int = 0, identity_seed: int = 0,
               clip_seed: int = 0, video_gender: float = 1.0, audio_gender: float = 1.0,
               audio: bool = True, face: bool = True) -> None:
    """Write one interview clip: H.264 yuv420p video and (unless audio=False) mono AAC.

    Atomic: written under a temporary name in the same folder, then renamed into place.
    Deterministic: the same arguments give the same decoded pixels and samples.
    """
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"width and height must be even and >= 16, got {width}x{height}")
    if seconds <= 0 or fps <= 0:
        raise ValueError("seconds and fps must be positive")
    if gender not in (0, 1):
        raise ValueError(f"gender must be 0 (female) or 1 (male), got {gender!r}")
    path = Path(path)
    p = _person(identity_seed, gender, video_gender, audio_gender)
    n_frames = max(1, round(seconds * fps))
    duration = n_frames / fps
    syl = _syllables(p, clip_seed, duration)
    mouth = _envelope(syl, (np.arange(n_frames) + 0.5) / fps)
    frames = _render_frames(seconds=duration, fps=fps, width=width, height=height,
                            gender=gender, identity_seed=identity_seed, clip_seed=clip_seed,
                            video_gender=video_gender, face=face,
                            envelope=np.clip(mouth, 0, 1), person=p)
    wave = _speech(p, clip_seed, duration, AUDIO_RATE) if audio else None

    encode_clip(path, frames, fps, wave)


def encode_clip(path: str | os.PathLike, frames, fps: float, wave: np.ndarray | None = None,
                audio_rate: int = AUDIO_RATE) -> None:
    """Encode RGB frames (uint8 [H, W, 3], any iterable, consumed once: their count fixes the
    duration) and an optional mono wave (float32 in [-1, 1] at `audio_rate`) as H.264 yuv420p
    + AAC in an mp4. Atomic: written under a temporary name, then renamed into place."""
    import av

    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to encode")
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"{path}: frame size must be even, got {width}x{height}")

    def with_last():  # (frame, is_last): the last frame flushes the rest of the audio
        prev = first
        for f in frames:
            yield prev, False
            prev = f
        yield prev, True

    def encode(tmp: Path) -> None:  # the muxer must be told mp4: the temporary name is not .mp4
        with av.open(str(tmp), "w", format="mp4") as out:
            rate = Fraction(fps).limit_denominator(1001)
            vs = out.add_stream("libx264", rate=rate)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            # a fixed thread count: x264 output is only reproducible for the same count
            vs.options = {**X264_OPTIONS, "threads": str(X264_THREADS)}
            if wave is not None:
                aus = out.add_stream("aac", rate=audio_rate)
                aus.layout = "mono"
                aus.bit_rate = 64000
            done = 0  # audio samples encoded so far
            for i, (rgb, last) in enumerate(with_last()):
                # BT.601 limited range, as swscale would do it, but cheaper at 720p
                yuv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                frame.pts = i
                frame.time_base = 1 / rate
                out.mux(vs.encode(frame))
                if wave is not None:  # keep the streams interleaved, like a real recording
                    upto = len(wave) if last else round((i + 1) / fps * audio_rate)
                    done = _encode_audio(out, aus, wave, done, upto, audio_rate)
            out.mux(vs.encode(None))
            if wave is not None:
                out.mux(aus.encode(None))

    atomic_write(Path(path), encode)


def _encode_audio(out, stream, wave: np.ndarray, start: int, stop: int,
                  rate: int = AUDIO_RATE) -> int:
    """Encode whole 1024-sample AAC frames of wave[start:stop] (the remainder at the end)."""
    import av

    size = 1024
    while start + size <= stop or (stop == len(wave) and start < stop):
        chunk = wave[start:min(start + size, stop)]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
        start += len(chunk)
    return start


# ---------------------------------------------------------------------------------------------
# corpora

TRAITS = ("extraversion", "neuroticism", "agreeableness", "conscientiousness", "interview",
          "openness")
OFFICIAL_SPLITS = ("training", "validation", "test")
MANIFEST_COLUMNS = ("clip", "person", "transcript", "label", "gender", "ethnicity")
_YT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ETHNICITY_CYCLE = (1, 0, 1, 2, 1, 1, 2, 0)  # group mix cycled over people (1 = majority)

_SENTENCES = (
    "Hi, my name is Sam and I'd like to tell you a little about myself.",
    "I studied economics, and then I spent two years working for a logistics company.",
    "What I enjoy most is solving problems together with a team.",
    "Honestly, I'm not sure; I think it depends on the situation.",
    "In my last job I was responsible for the weekly reports.",
    "I've always been curious about how things work, so I read a lot.",
    "My friends would describe me as calm, reliable and a bit stubborn.",
    "One time a client was really upset, and I had to find a solution quickly.",
    "I worked part-time in a café while I was at university.",
    "I updated my résumé last week, it's all in there.",
    "Maybe that sounds naïve, but I believe people can change.",
    "So yeah, that's basically it - thanks for watching!",
    "I like to plan my day in the morning: first emails, then the hard tasks.",
    "When I disagree with someone, I try to listen first and then explain my view.",
    "\"Never stop learning\" is something my grandmother used to say.",
    "I'm looking for a position where I can grow and take on more responsibility.",
    "To be fair, I don't have much experience with that, but I learn fast.",
    "We launched the project on time, which was a big deal for us.",
    "I think communication is the most important skill in any job.",
    "Um, let me think... I guess my biggest weakness is that I'm impatient.",
)


def _transcript(rng: np.random.Generator, k: int, must: tuple[int, ...] = ()) -> str:
    idx = list(must) + [int(i) for i in rng.choice(len(_SENTENCES), k, replace=False)
                        if int(i) not in must]
    return " ".join(_SENTENCES[i] for i in idx[:max(k, len(must))])


def _py2_pickle(obj) -> bytes:
    """Protocol-2 pickle of nested dicts of str -> (float | str | dict), as Python 2 wrote them.

    Strings are emitted as Python 2 byte strings (SHORT_BINSTRING / BINSTRING, latin-1 bytes),
    which Python 3's pickler cannot produce for str: readers need encoding="latin1".
    """
    out = bytearray(b"\x80\x02")  # PROTO 2
    memo = 0

    def put():
        nonlocal memo  # memoise like cPickle did: BINPUT / LONG_BINPUT after each object
        out.extend(b"q" + bytes([memo]) if memo < 256 else b"r" + struct.pack("<I", memo))
        memo += 1

    def emit(o):
        if isinstance(o, dict):
            out.extend(b"}")  # EMPTY_DICT
            put()
            items = list(o.items())
            for i in range(0, len(items), 1000):  # cPickle's SETITEMS batch size
                batch = items[i:i + 1000]
                if len(batch) > 1:
                    out.extend(b"(")  # MARK
                for k, v in batch:
                    emit(k)
                    emit(v)
                out.extend(b"u" if len(batch) > 1 else b"s")  # SETITEMS / SETITEM
        elif isinstance(o, str):
            data = o.encode("latin1")
            if len(data) < 256:
                out.extend(b"U" + bytes([len(data)]) + data)  # SHORT_BINSTRING
            else:
                out.extend(b"T" + struct.pack("<i", len(data)) + data)  # BINSTRING
            put()
        elif isinstance(o, float | np.floating):
            out.extend(b"G" + struct.pack(">d", float(o)))  # BINFLOAT
        else:
            raise TypeError(f"cannot emit {type(o).__name__} as a Python 2 pickle")

    emit(obj)
    out.extend(b".")  # STOP
    return bytes(out)


def _youtube_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        s = list(rng.choice(list(_YT_ALPHABET), 11))
        if len(ids) == 0 and "-" not in s:  # guarantee both special characters appear
            s[int(rng.integers(1, 10))] = "-"
        if len(ids) == 1 and "_" not in s:
            s[int(rng.integers(1, 10))] = "_"
        yt = "".join(s)
        if yt not in ids:
            ids.append(yt)
    return ids


def _people(rng: np.random.Generator, people: int) -> list[dict]:
    """Gender exactly balanced (alternating before a shuffle), ethnicity cycled, merit N(0,1)."""
    genders = [i % 2 for i in range(people)]
    order = rng.permutation(people)
    out = []
    for i in range(people):
        out.append({"gender": genders[int(order[i])],
                    "ethnicity": _ETHNICITY_CYCLE[i % len(_ETHNICITY_CYCLE)],
                    "merit": float(rng.standard_normal()),
                    "identity_seed": int(rng.integers(2**31))})
    return out


def make_chalearn_corpus(root: str | os.PathLike, *, people: int = 8, clips_per_person: int = 3,
                         seed: int = 0, seconds: float = 2.0, fps: float = 10, width: int = 160,
                         height: int = 120, video_gender: float = 1.0,
                         audio_gender: float = 1.0) -> dict[str, dict]:
    """A tiny corpus in the ChaLearn First Impressions V2 layout; returns the ground truth.

    Clips are `<YouTubeID>.<NNN>.mp4` under differently nested folders per official split;
    annotation / transcription pickles are Python 2 pickles (load with encoding="latin1");
    eth_gender_annotations_{dev,test}.csv carry ethnicity (1 Asian, 2 Caucasian,
    3 African-American) and gender (1 male, 2 female). One person's clips span two official
    splits, as speakers do in the real splits. Returns clip id (no .mp4) -> {"identity",
    "gender" (0 female / 1 male), "ethnicity" (0/1/2), "official_split", "path"}.
    """
    if people < 3 or clips_per_person < 2:
        raise ValueError("need people >= 3 (one per official split) and clips_per_person >= 2")
    root = Path(root)
    rng = np.random.default_rng([0xCA1, seed])
    folk = _people(rng, people)
    ids = _youtube_ids(rng, people)
    # interleave genders, then cut ~60/20/20 into official splits: each split stays mixed
    women = [i for i in range(people) if folk[i]["gender"] == 0]
    men = [i for i in range(people) if folk[i]["gender"] == 1]
    mixed = [x for pair in zip(women, men, strict=False) for x in pair]
    mixed += women[len(men):] + men[len(women):]
    n_val = max(1, round(0.2 * people))
    n_test = max(1, round(0.2 * people))
    n_train = people - n_val - n_test
    split_of = {}
    for k, i in enumerate(mixed):
        split_of[i] = ("training" if k < n_train else
                       "validation" if k < n_train + n_val else "test")
    straddler = mixed[0]  # a training speaker whose last clip is in the validation split

    truth: dict[str, dict] = {}
    counters = dict.fromkeys(OFFICIAL_SPLITS, 0)
    for i in range(people):
        person = folk[i]
        for n in range(clips_per_person):
            split = split_of[i]
            if i == straddler and n == clips_per_person - 1:
                split = "validation"
            path = chalearn_clip_path(root, split, counters[split], f"{ids[i]}.{n:03d}")
            counters[split] += 1
            write_clip(path, seconds=seconds, fps=fps, width=width, height=height,
                       gender=person["gender"], identity_seed=person["identity_seed"],
                       clip_seed=int(rng.integers(2**31)), video_gender=video_gender,
                       audio_gender=audio_gender)
            # interview score: person merit plus clip noise, nothing else (no gender term)
            interview = _sigmoid(person["merit"] + 0.35 * float(rng.standard_normal()))
            traits = {t: round(interview if t == "interview" else _sigmoid(
                0.6 * person["merit"] + 0.8 * float(rng.standard_normal())), 10) for t in TRAITS}
            # the first clip always mentions the café (sentence 8: latin-1) and is long
            # enough (> 255 bytes) to need BINSTRING
            must = (8, 1, 6, 13, 16) if (i, n) == (0, 0) else ()
            truth[path.stem] = {"identity": ids[i], "gender": person["gender"],
                                "ethnicity": person["ethnicity"], "official_split": split,
                                "path": path, "traits": traits,
                                "transcript": _transcript(rng, int(rng.integers(2, 6)), must)}
    write_chalearn_annotations(root, truth)
    for t in truth.values():
        del t["traits"], t["transcript"]
    return truth


def chalearn_clip_path(root: Path, split: str, k: int, clip: str) -> Path:
    """Where the k-th clip of an official split goes: differently nested folders per split,
    like the unpacked official archives (the folder is created)."""
    if split == "training":
        folder = root / f"train-{k // 8 + 1}" / f"training80_{k // 4 + 1:02d}"
    elif split == "validation":
        folder = root / "val"
    else:
        folder = root / "test" / f"test80_{k // 4 + 1:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{clip}.mp4"


def write_chalearn_annotations(root: Path, clips: dict[str, dict]) -> None:
    """The ChaLearn annotation files for clips written under `root`: clip id -> {"identity",
    "gender" (0 female / 1 male), "ethnicity" (0 Asian / 1 Caucasian / 2 African-American, or
    None: left blank, read as unknown), "official_split", "traits" (trait -> score in [0, 1]),
    "transcript"}. Annotation / transcription pickles are Python 2 pickles;
    eth_gender_annotations_{dev,test}.csv carry the codes (gender 1 male, 2 female)."""
    annotations = {s: {t: {} for t in TRAITS} for s in OFFICIAL_SPLITS}
    transcripts: dict[str, dict[str, str]] = {s: {} for s in OFFICIAL_SPLITS}
    for clip, c in clips.items():
        for t in TRAITS:
            annotations[c["official_split"]][t][f"{clip}.mp4"] = c["traits"][t]
        transcripts[c["official_split"]][f"{clip}.mp4"] = c["transcript"]
    for split in OFFICIAL_SPLITS:
        atomic_write(root / f"annotation_{split}.pkl", _py2_pickle(annotations[split]))
        atomic_write(root / f"transcription_{split}.pkl", _py2_pickle(transcripts[split]))
    for name, splits in (("dev", ("training", "validation")), ("test", ("test",))):
        lines = ["VideoName;YouTubeID;Ethnicity;Gender"]
        for clip, t in clips.items():
            if t["official_split"] in splits:
                code = 1 if t["gender"] == 1 else 2
                eth = "" if t["ethnicity"] is None else t["ethnicity"] + 1
                lines.append(f"{clip}.mp4;{t['identity']};{eth};{code}")
        atomic_write(root / f"eth_gender_annotations_{name}.csv",
                      ("\n".join(lines) + "\n").encode())


def make_manifest_corpus(root: str | os.PathLike, *, people: int = 8, clips_per_person: int = 3,
                         seed: int = 0, seconds: float = 2.0, fps: float = 10, width: int = 160,
                         height: int = 120, video_gender: float = 1.0,
                         audio_gender: float = 1.0) -> Path:
    """A corpus described by `root/manifest.csv`; returns the manifest's path.

    Columns clip,person,transcript,label,gender,ethnicity: clip is relative to the CSV's
    folder; transcript is the text itself or a relative path to a .txt under transcripts/;
    label in [0, 1]; gender female/male and ethnicity 0/1/2, each empty for some rows.
    """
    if people < 1 or clips_per_person < 1:
        raise ValueError("need at least one person and one clip per person")
    root = Path(root)
    rng = np.random.default_rng([0x3A1, seed])
    folk = _people(rng, people)
    (root / "transcripts").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, person in enumerate(folk):
        name = f"cand{i:03d}"
        (root / "clips" / name).mkdir(parents=True, exist_ok=True)
        for n in range(clips_per_person):
            rel = Path("clips") / name / f"{n}.mp4"
            write_clip(root / rel, seconds=seconds, fps=fps, width=width, height=height,
                       gender=person["gender"], identity_seed=person["identity_seed"],
                       clip_seed=int(rng.integers(2**31)), video_gender=video_gender,
                       audio_gender=audio_gender)
            text = _transcript(rng, int(rng.integers(2, 5)))
            r = len(rows)
            if r % 2:  # every other transcript lives in its own file
                txt = Path("transcripts") / f"{name}_{n}.txt"
                atomic_write(root / txt, text.encode("utf-8"))
                text = txt.as_posix()
            label = _sigmoid(person["merit"] + 0.35 * float(rng.standard_normal()))
            # some annotations are missing; rows 1 and 2 always, so both cases exist
            hide_g = r == 1 or (r > 2 and rng.random() < 0.1)
            hide_e = r == 2 or (r > 2 and rng.random() < 0.1)
            rows.append({"clip": rel.as_posix(), "person": name, "transcript": text,
                         "label": f"{label:.4f}",
                         "gender": "" if hide_g else ("male" if person["gender"] else "female"),
                         "ethnicity": "" if hide_e else str(person["ethnicity"])})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = root / "manifest.csv"
    atomic_write(manifest, buf.getvalue().encode("utf-8"))
    return manifest


def _throughput_job(args) -> Path:
    path, kw = args
    write_clip(path, **kw)
    return path


def write_throughput_clips(folder: str | os.PathLike, n: int, *, seconds: float = 15.0,
                           width: int = 1280, height: int = 720, fps: float = 25,
                           seed: int = 0) -> list[Path]:
    """n realistic-size clips (`tp_0000.mp4`, ...) for timing a preprocessing pipeline.

    Genders alternate; every clip is a different person. Clips are written by a few worker
    processes (each x264 encoder uses X264_THREADS threads).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([0x7B, seed])
    jobs = []
    for i in range(n):
        kw = {"seconds": seconds, "fps": fps, "width": width, "height": height,
              "gender": i % 2, "identity_seed": int(rng.integers(2**31)),
              "clip_seed": int(rng.integers(2**31))}
        jobs.append((folder / f"tp_{i:04d}.mp4", kw))
    workers = max(1, min(n, (os.cpu_count() or 1) // X264_THREADS))
    if workers == 1:
        return [_throughput_job(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_throughput_job, jobs))
