"""Raw corpora (ChaLearn layout and CSV manifest) through preprocessing: every bad input is
an error naming its file or a counted skip, pickles never run code, and a killed run
resumes without redoing a clip."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.rawmedia import make_chalearn_corpus, make_manifest_corpus, write_clip
from data_modules.errors import CorpusError
from data_modules.safe_pickle import UnsafePickleError, load_pickle
from data_modules.schema import SPLITS
from data_modules.shards import open_streaming
from data_modules.sources import build_shards, get_source
from fair_lightning.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def chalearn_cfg(root: Path, cache: Path, **extra):
    ov = {"data.source": "chalearn", "data.chalearn.root": str(root),
          "data.cache_dir": str(cache), "data.preprocess.workers": "1", **extra}
    return load_config("baseline", list(ov.items())).data


def manifest_cfg(path: Path, cache: Path, **extra):
    ov = {"data.source": "manifest", "data.manifest.path": str(path),
          "data.cache_dir": str(cache), "data.preprocess.workers": "1", **extra}
    return load_config("baseline", list(ov.items())).data


def _rewrite(path: Path, change) -> None:
    data = load_pickle(path)
    change(data)
    path.write_bytes(pickle.dumps(data, protocol=2))


def _report(cfg) -> dict:
    meta = json.loads((build_shards(cfg) / "meta.json").read_text())
    return json.loads(Path(meta["preprocess_report"]).read_text())


@pytest.fixture(scope="module")
def chalearn_truth(tmp_path_factory):
    root = tmp_path_factory.mktemp("chalearn")
    return root, make_chalearn_corpus(root, people=6, clips_per_person=2, seed=3)


def _corpus_copy(chalearn_truth, tmp_path) -> tuple[Path, dict]:
    src, truth = chalearn_truth
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    truth = {clip: {**info, "path": str(root / Path(info["path"]).relative_to(src))}
             for clip, info in truth.items()}
    return root, truth


# --------------------------------------------------------------------------- chalearn
def test_chalearn_records_follow_the_annotations(chalearn_truth, tmp_path):
    root, truth = _corpus_copy(chalearn_truth, tmp_path)
    cfg = chalearn_cfg(root, tmp_path / "cache")
    shards = build_shards(cfg)
    seen = {}
    labels = load_pickle(root / "annotation_training.pkl")["interview"]
    for split in SPLITS:
        ds = open_streaming(shards / split, shuffle=False, seed=0)
        for i in range(len(ds)):
            r = ds[i]
            seen[r["clip_id"]] = r
    assert set(seen) == set(truth)
    for clip, r in seen.items():
        t = truth[clip]
        assert r["identity"] == t["identity"] and r["identity"] == clip.rsplit(".", 1)[0]
        assert (r["gender"], r["ethnicity"]) == (t["gender"], t["ethnicity"])
        assert r["video"].shape == (4, 3, 32, 32) and r["faces"].shape == (4, 3, 32, 32)
        assert r["text"].shape[1] == 384 and r["audio"].shape[1] == 24
        assert np.isnan(r["merit"])
        if clip + ".mp4" in labels:
            assert r["label"] == pytest.approx(labels[clip + ".mp4"])
    report = json.loads((shards / "meta.json").read_text())
    assert report["shared_identities"] == 0  # identity splits never share a person


def test_official_splits_keep_chalearn_assignment_and_say_they_share_people(
        chalearn_truth, tmp_path, caplog):
    root, truth = _corpus_copy(chalearn_truth, tmp_path)
    cfg = chalearn_cfg(root, tmp_path / "cache", **{"data.chalearn.splits": "official"})
    shards = build_shards(cfg)
    meta = json.loads((shards / "meta.json").read_text())
    for split in SPLITS:
        ds = open_streaming(shards / split, shuffle=False, seed=0)
        for i in range(len(ds)):
            official = truth[ds[i]["clip_id"]]["official_split"]
            assert {"training": "train", "validation": "val"}.get(official, official) == split
    spans = {}
    for t in truth.values():
        spans.setdefault(t["identity"], set()).add(t["official_split"])
    assert meta["shared_identities"] == sum(len(s) > 1 for s in spans.values()) > 0
    assert "share" in caplog.text


def test_a_malicious_pickle_is_refused_and_never_runs(chalearn_truth, tmp_path):
    root, _ = _corpus_copy(chalearn_truth, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "annotation_validation.pkl").write_bytes(pickle.dumps({"interview": Payload()}))
    with pytest.raises(UnsafePickleError, match="annotation_validation.pkl.*posix.system|"
                                                "annotation_validation.pkl.*os.system"):
        build_shards(chalearn_cfg(root, tmp_path / "cache"))
    assert not marker.exists()


@pytest.mark.parametrize("content, match", [
    (["interview"], "expected a dict trait"),
    ({"interview": {"x.000.mp4": "high"}}, "must be a number in \\[0, 1\\]"),
    ({"openness": {"x.000.mp4": 0.5}}, "no trait 'interview'"),
])
def test_a_pickle_of_the_wrong_structure_names_the_file(chalearn_truth, tmp_path, content, match):
    root, _ = _corpus_copy(chalearn_truth, tmp_path)
    (root / "annotation_test.pkl").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(CorpusError, match=f"annotation_test.pkl.*{match}"):
        build_shards(chalearn_cfg(root, tmp_path / "cache"))


def test_an_unknown_csv_code_names_file_and_line(chalearn_truth, tmp_path):
    root, _ = _corpus_copy(chalearn_truth, tmp_path)
    csv_path = root / "eth_gender_annotations_test.csv"
    lines = csv_path.read_text().splitlines()
    parts = lines[1].split(";")
    parts[2] = "7"
    lines[1] = ";".join(parts)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match="eth_gender_annotations_test.csv:2: unknown Ethnicity "
                                          "code '7'"):
        build_shards(chalearn_cfg(root, tmp_path / "cache"))


def test_a_missing_root_says_where_data_goes(tmp_path):
    with pytest.raises(CorpusError, match="(?s)not a folder.*annotation_\\{training"):
        build_shards(chalearn_cfg(tmp_path / "nowhere", tmp_path / "cache"))


def test_every_bad_clip_is_a_counted_skip_and_nothing_is_lost(chalearn_truth, tmp_path):
    root, truth = _corpus_copy(chalearn_truth, tmp_path)
    clips = sorted(truth)
    # one clip of each of the six people, so every person keeps a clip for the splits
    bad = dict(zip(["decode_error", "empty_file", "no_audio", "no_face", "empty_transcript",
                    "missing_file"], clips[0::2], strict=True))
    path = {c: Path(truth[c]["path"]) for c in clips}
    data = path[bad["decode_error"]].read_bytes()
    path[bad["decode_error"]].write_bytes(data[: len(data) // 3])
    path[bad["empty_file"]].write_bytes(b"")
    write_clip(path[bad["no_audio"]], audio=False, identity_seed=1)
    write_clip(path[bad["no_face"]], face=False, identity_seed=1)
    path[bad["missing_file"]].unlink()
    # an empty transcript, and a video that no annotation names
    for f in root.glob("transcription_*.pkl"):
        _rewrite(f, lambda d: d.update({bad["empty_transcript"] + ".mp4": "  "})
                 if bad["empty_transcript"] + ".mp4" in d else None)
    stray = path[clips[-1]].with_name("zzzzzzzzzzz.000.mp4")
    shutil.copy(path[clips[-1]], stray)

    cfg = chalearn_cfg(root, tmp_path / "cache")
    report = _report(cfg)
    expected = {reason: 1 for reason in bad} | {"no_annotation": 1}
    assert report["skipped"] == expected
    for reason, clip in bad.items():
        assert report["skipped_examples"][reason][0]["clip_id"] == clip
    assert "zzzzzzzzzzz.000" == report["skipped_examples"]["no_annotation"][0]["clip_id"]
    assert report["usable"] == len(clips) - len(bad)
    store = Path(json.loads((build_shards(cfg) / "meta.json").read_text())["preprocess_report"]).parent
    csv_rows = (store / "skipped.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + sum(expected.values())
    md = (store / "report.md").read_text()
    assert "| no_face | 1 |" in md and "decode_error" in md
    # a second run redoes nothing, skips included
    source = get_source(cfg)
    entries, skipped = source.scanned()
    from data_modules.preprocess import preprocess

    _, again = preprocess(entries, skipped, store=source.store(), settings=source.settings(),
                          text_model=cfg.text_model, max_sentences=16, workers=1,
                          source="chalearn", corpus=str(root))
    assert again.processed_now == 0 and again.skipped == report["skipped"]


# --------------------------------------------------------------------------- manifest
def test_manifest_rows_become_records_and_bad_rows_name_the_line(tmp_path):
    path = make_manifest_corpus(tmp_path / "mine", people=5, clips_per_person=2, seed=1)
    cfg = manifest_cfg(path, tmp_path / "cache")
    shards = build_shards(cfg)
    meta = json.loads((shards / "meta.json").read_text())
    assert sum(meta["clips"].values()) == 10 and sum(meta["identities"].values()) == 5
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    for column, value, match in (("label", "1.7", ":2: label 1.7 must lie in \\[0, 1\\]"),
                                 ("gender", "x", ":2: gender 'x' must be female, male"),
                                 ("ethnicity", "5", ":2: ethnicity '5' must be a group index")):
        changed = [list(r) for r in rows]
        changed[1][rows[0].index(column)] = value
        bad = path.with_name(f"bad_{column}.csv")
        with open(bad, "w", newline="") as f:
            csv.writer(f).writerows(changed)
        with pytest.raises(CorpusError, match=f"bad_{column}.csv{match}"):
            get_source(manifest_cfg(bad, tmp_path / "cache")).scanned()


def test_manifest_transcript_files_missing_or_not_utf8_are_counted_skips(tmp_path):
    path = make_manifest_corpus(tmp_path / "mine", people=4, clips_per_person=2, seed=2)
    base = path.parent
    lines = path.read_text().splitlines()
    txt = [r for r in lines[1:] if ".txt" in r]
    assert len(txt) >= 2, "the generator writes some transcripts as files"
    first = base / next(p for p in txt[0].split(",") if p.endswith(".txt"))
    first.write_bytes("caf\xe9 latin1".encode("latin1"))
    second = base / next(p for p in txt[1].split(",") if p.endswith(".txt"))
    second.unlink()
    entries, skipped = get_source(manifest_cfg(path, tmp_path / "cache")).scanned()
    reasons = sorted(s.reason for s in skipped)
    assert reasons == ["transcript_missing", "transcript_not_utf8"]
    assert len(entries) == 8 - 2


# --------------------------------------------------------------------------- resume
def test_a_killed_preprocess_resumes_without_redoing_a_clip(tmp_path):
    path = make_manifest_corpus(tmp_path / "mine", people=6, clips_per_person=3, seed=4)
    args = [sys.executable, "-m", "fair_lightning.cli.preprocess", "data.source=manifest",
            f"data.manifest.path={path}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.preprocess.workers=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    media = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((tmp_path / "cache").glob("preprocessed/*/media/*.npz"))
        if len(found) >= 3:
            media = found
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert media, "preprocessing never finished a clip"
    done = {p.name for p in (tmp_path / "cache").glob("preprocessed/*/media/*.npz")}
    assert 3 <= len(done) < 18
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # no half-written clip is kept: a killed worker's temporary is removed by the rerun
    assert not list((tmp_path / "cache").glob("preprocessed/*/*/.*"))
    report = json.loads(next((tmp_path / "cache").glob("preprocessed/*/report.json")).read_text())
    assert report["reused"] == len(done) and report["processed_now"] == 18 - len(done)
    # the finished clips were not rewritten, and the shards equal an uninterrupted run's
    fresh = build_shards(manifest_cfg(path, tmp_path / "fresh"))
    resumed = Path(out.stdout.strip().splitlines()[-1].split("shards: ")[1])
    for split in SPLITS:
        a = open_streaming(fresh / split, shuffle=False, seed=0)
        b = open_streaming(resumed / split, shuffle=False, seed=0)
        assert len(a) == len(b)
        for i in range(len(a)):
            ra, rb = a[i], b[i]
            assert ra["clip_id"] == rb["clip_id"]
            for k in ("video", "faces", "audio", "text"):
                np.testing.assert_array_equal(ra[k], rb[k])


# --------------------------------------------------------------------------- dlib
def test_dlib_detector_and_descriptors_end_up_in_the_records(tmp_path):
    path = make_manifest_corpus(tmp_path / "mine", people=5, clips_per_person=1, seed=5)
    cfg = manifest_cfg(path, tmp_path / "cache", **{"data.preprocess.detector": "dlib",
                                                    "data.preprocess.face_embedding": "dlib"})
    shards = build_shards(cfg)
    report = _report(cfg)
    assert report["usable"] == 5 and report["skipped"] == {}
    assert report["stage_seconds"]["face_embedding"] > 0
    embs = []
    for split in SPLITS:
        ds = open_streaming(shards / split, shuffle=False, seed=0)
        for i in range(len(ds)):
            e = ds[i]["face_embedding"]
            assert e.shape == (4, 128) and e.dtype == np.float16
            embs.append(e.astype(np.float32))
    # one person's frames are closer to each other than to other people's (dlib: < 0.6)
    within = np.mean([np.linalg.norm(e[0] - e[1]) for e in embs])
    between = np.mean([np.linalg.norm(a[0] - b[0]) for i, a in enumerate(embs)
                       for b in embs[i + 1:]])
    assert within < between, (within, between)


def test_a_copied_corpus_gives_the_same_shards(chalearn_truth, tmp_path):
    """File times enter the cache key (a changed clip is redone) but not the data: a copy of
    the corpus, with new times, trains on the same shards in the same order."""
    first, _ = _corpus_copy(chalearn_truth, tmp_path / "a")
    second, _ = _corpus_copy(chalearn_truth, tmp_path / "b")
    for clip in second.rglob("*.mp4"):
        os.utime(clip, (1e9, 1e9))
    a = build_shards(chalearn_cfg(first, tmp_path / "cache"))
    b = build_shards(chalearn_cfg(second, tmp_path / "cache"))
    assert a != b
    for split in SPLITS:
        da = open_streaming(a / split, shuffle=False, seed=0)
        db = open_streaming(b / split, shuffle=False, seed=0)
        assert [da[i]["clip_id"] for i in range(len(da))] == \
            [db[i]["clip_id"] for i in range(len(db))]
