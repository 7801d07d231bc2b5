"""Raw interview corpora: decodable clips, detectable faces, planted pitch, ChaLearn layout."""

from __future__ import annotations

import csv
import io
import pickle
import pickletools
import re
from collections import defaultdict
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from benchmarks import rawmedia
from data_modules.features.audio import audio_features, pitch_hz

CASCADE = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
CLIP_NAME = re.compile(r"^[A-Za-z0-9_-]{11}\.\d{3}\.mp4$")


def decode(path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    """RGB frames, and the audio as 16 kHz mono float32 (None without an audio stream)."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return frames, None
        rs = av.AudioResampler(format="flt", layout="mono", rate=16000)
        parts = [g.to_ndarray()[0] for f in c.decode(audio=0) for g in rs.resample(f)]
        parts += [g.to_ndarray()[0] for g in rs.resample(None)]
    return frames, np.concatenate(parts)


def has_face(rgb: np.ndarray) -> bool:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    side = gray.shape[0] // 6
    found = CASCADE.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    return len(found) > 0


def median_f0(wave: np.ndarray) -> float:
    hz = pitch_hz(audio_features(torch.from_numpy(wave))).numpy()
    assert np.isfinite(hz).mean() > 0.3  # mostly voiced speech, not noise
    return float(np.nanmedian(hz))


def test_clip_streams_and_sizes(tmp_path):
    path = tmp_path / "a.mp4"
    rawmedia.write_clip(path, seconds=2.0, fps=10, width=160, height=120)
    with av.open(str(path)) as c:
        (v,) = c.streams.video
        (a,) = c.streams.audio
        assert (v.codec_context.width, v.codec_context.height) == (160, 120)
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert a.codec_context.name == "aac" and a.codec_context.channels == 1
        assert a.codec_context.sample_rate in (16000, 44100)
    frames, wave = decode(path)
    assert 19 <= len(frames) <= 21
    assert frames[0].shape == (120, 160, 3)
    assert 1.9 <= len(wave) / 16000 <= 2.2
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temporary left behind

    silent = tmp_path / "silent.mp4"
    rawmedia.write_clip(silent, seconds=1.0, fps=8, width=96, height=64, audio=False)
    with av.open(str(silent)) as c:
        assert len(c.streams.audio) == 0
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) \
            == (96, 64)
    frames, wave = decode(silent)
    assert wave is None and len(frames) == 8


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(**kw):
        yield np.zeros((kw["height"], kw["width"], 3), np.uint8)
        raise RuntimeError("renderer died")

    monkeypatch.setattr(rawmedia, "_render_frames", broken)
    with pytest.raises(RuntimeError, match="renderer died"):
        rawmedia.write_clip(tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        rawmedia.write_clip(tmp_path / "odd.mp4", width=161)


def test_deterministic(tmp_path):
    kw = {"seconds": 1.5, "identity_seed": 4, "clip_seed": 9, "gender": 1}
    rawmedia.write_clip(tmp_path / "a.mp4", **kw)
    rawmedia.write_clip(tmp_path / "b.mp4", **kw)
    fa, wa = decode(tmp_path / "a.mp4")
    fb, wb = decode(tmp_path / "b.mp4")
    assert len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))
    assert np.array_equal(wa, wb)
    rawmedia.write_clip(tmp_path / "c.mp4", **{**kw, "clip_seed": 10})
    fc, _ = decode(tmp_path / "c.mp4")
    assert not np.array_equal(fa[0], fc[0])  # the clip seed matters


@pytest.mark.parametrize(("width", "height", "seconds"), [(160, 120, 2.0), (1280, 720, 0.6)])
def test_haar_finds_the_face(tmp_path, width, height, seconds):
    for ident, gender in ((0, 0), (1, 1), (2, 0)):
        path = tmp_path / f"{ident}.mp4"
        rawmedia.write_clip(path, seconds=seconds, fps=10, width=width, height=height,
                            gender=gender, identity_seed=ident, clip_seed=ident + 100)
        frames, _ = decode(path)
        hits = [has_face(f) for f in frames]
        assert np.mean(hits) >= 0.9, (ident, hits)
        rawmedia.write_clip(path, seconds=seconds, fps=10, width=width, height=height,
                            gender=gender, identity_seed=ident, clip_seed=ident + 100,
                            face=False)
        frames, _ = decode(path)
        assert not any(has_face(f) for f in frames)


def test_video_gender_knob(tmp_path):
    def first_frames(gender, knob):
        path = tmp_path / f"{gender}_{knob}.mp4"
        rawmedia.write_clip(path, seconds=0.5, gender=gender, identity_seed=3, clip_seed=3,
                            video_gender=knob, audio=False)
        return decode(path)[0]

    # knob 0: the face does not depend on gender at all; knob 1: it does (hair, width, brows)
    for a, b in zip(first_frames(0, 0.0), first_frames(1, 0.0), strict=True):
        assert np.array_equal(a, b)
    diff = np.abs(first_frames(0, 1.0)[0].astype(int) - first_frames(1, 1.0)[0]).mean()
    assert diff > 1.0


def test_pitch_follows_audio_gender(tmp_path):
    def f0(gender, ident, knob):
        path = tmp_path / f"{gender}_{ident}_{knob}.mp4"
        rawmedia.write_clip(path, seconds=2.0, width=64, height=48, gender=gender,
                            identity_seed=ident, clip_seed=ident, audio_gender=knob)
        return median_f0(decode(path)[1])

    ids = (0, 1, 2)
    women = [f0(0, i, 1.0) for i in ids]
    men = [f0(1, i, 1.0) for i in ids]
    assert max(men) < 145 < 165 < min(women), (men, women)
    assert np.exp(np.mean(np.log(women)) - np.mean(np.log(men))) > 1.45
    # knob 0: the same person sounds the same whatever the gender, near the pooled ~159 Hz
    women0 = [f0(0, i, 0.0) for i in ids]
    men0 = [f0(1, i, 0.0) for i in ids]
    assert np.allclose(women0, men0, rtol=1e-6)
    assert all(125 < f < 200 for f in women0)
    # and different people of the two genders are not separated either
    other_men0 = [f0(1, i, 0.0) for i in (5, 6, 7)]
    assert abs(np.mean(np.log(other_men0)) - np.mean(np.log(women0))) < 0.15


def test_py2_pickle_emitter():
    obj = {"a": 0.25, "nested": {f"k{i}": float(i) for i in range(1200)},
           "long": "x" * 300 + " café", "short": "naïve"}
    data = rawmedia._py2_pickle(obj)
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert {"SHORT_BINSTRING", "BINSTRING", "SETITEMS", "LONG_BINPUT", "BINFLOAT"} <= ops
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "UNICODE"}
    assert pickle.loads(data, encoding="latin1") == obj
    assert pickle.loads(data, encoding="bytes")[b"short"] == "naïve".encode("latin1")
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # py3's default ASCII decoding cannot read py2 latin-1 strings
    with pytest.raises(TypeError):
        rawmedia._py2_pickle({"bad": [1, 2]})


@pytest.fixture(scope="module")
def chalearn(tmp_path_factory):
    root = tmp_path_factory.mktemp("chalearn")
    truth = rawmedia.make_chalearn_corpus(root, people=6, clips_per_person=2, seed=1,
                                          seconds=1.0, width=96, height=72)
    return root, truth


def test_chalearn_files_and_splits(chalearn):
    root, truth = chalearn
    assert len(truth) == 12
    ids = set()
    depths = set()
    for clip, t in truth.items():
        path = Path(t["path"])
        assert path.is_file() and path.name == f"{clip}.mp4"
        assert CLIP_NAME.match(path.name), path.name
        assert t["identity"] == clip[:11]
        ids.add(t["identity"])
        depths.add(len(path.relative_to(root).parts))
        assert t["official_split"] in ("training", "validation", "test")
    assert len(depths) > 1  # differently nested folders
    assert any("-" in i for i in ids) and any("_" in i for i in ids)
    splits = defaultdict(set)
    gender = {}
    for t in truth.values():
        splits[t["identity"]].add(t["official_split"])
        gender[t["identity"]] = t["gender"]
    assert any(len(s) > 1 for s in splits.values())  # a speaker shared by two splits
    assert sorted(gender.values()) == [0, 0, 0, 1, 1, 1]
    assert {t["official_split"] for t in truth.values()} == {"training", "validation", "test"}


def test_chalearn_pickles_are_python2(chalearn):
    root, truth = chalearn
    seen_latin1 = False
    for split in ("training", "validation", "test"):
        clips = {f"{c}.mp4" for c, t in truth.items() if t["official_split"] == split}
        for kind in ("annotation", "transcription"):
            data = (root / f"{kind}_{split}.pkl").read_bytes()
            ops = {op.name for op, _, _ in pickletools.genops(data)}
            assert ops & {"SHORT_BINSTRING", "BINSTRING"}
            assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "UNICODE"}
            raw = pickle.loads(data, encoding="bytes")  # py2 str arrive as bytes
            assert all(isinstance(k, bytes) for k in raw)
            with open(root / f"{kind}_{split}.pkl", "rb") as f:
                obj = pickle.load(f, encoding="latin1")
            if kind == "annotation":
                assert set(obj) == set(rawmedia.TRAITS)
                for scores in obj.values():
                    assert set(scores) == clips
                    assert all(isinstance(v, float) and 0 <= v <= 1 for v in scores.values())
            else:
                assert set(obj) == clips
                assert all(isinstance(v, str) and re.search(r"[.!?]$", v) for v in obj.values())
                if any("é" in v for v in obj.values()):
                    seen_latin1 = True
                    with pytest.raises(UnicodeDecodeError):
                        pickle.loads(data)
    assert seen_latin1


def test_chalearn_gender_csv(chalearn):
    root, truth = chalearn
    for name, splits in (("dev", {"training", "validation"}), ("test", {"test"})):
        text = (root / f"eth_gender_annotations_{name}.csv").read_text()
        lines = text.splitlines()
        assert lines[0] == "VideoName;YouTubeID;Ethnicity;Gender"
        rows = [line.split(";") for line in lines[1:]]
        want = {f"{c}.mp4" for c, t in truth.items() if t["official_split"] in splits}
        assert {r[0] for r in rows} == want
        for video, yt, eth, gen in rows:
            t = truth[video[:-4]]
            assert yt == t["identity"]
            assert int(eth) == t["ethnicity"] + 1 and eth in ("1", "2", "3")
            assert gen == ("1" if t["gender"] == 1 else "2")


def test_manifest_rows_resolve(tmp_path):
    manifest = rawmedia.make_manifest_corpus(tmp_path / "m", people=4, clips_per_person=2,
                                             seed=2, seconds=0.5, width=64, height=48)
    text = manifest.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "clip,person,transcript,label,gender,ethnicity"
    assert len(rows) == 8
    inline = files = 0
    for r in rows:
        clip = manifest.parent / r["clip"]
        assert clip.is_file() and not Path(r["clip"]).is_absolute()
        assert clip.parent.name == r["person"]
        if r["transcript"].endswith(".txt"):
            assert (manifest.parent / r["transcript"]).read_text(encoding="utf-8").strip()
            files += 1
        else:
            assert len(r["transcript"].split()) > 5
            inline += 1
        assert 0 <= float(r["label"]) <= 1
        assert r["gender"] in ("", "female", "male")
        assert r["ethnicity"] in ("", "0", "1", "2")
    assert inline and files
    assert any(r["gender"] == "" for r in rows) and any(r["ethnicity"] == "" for r in rows)
    assert {r["gender"] for r in rows} >= {"female", "male"}
    assert '"' in text  # some inline transcripts needed quoting
