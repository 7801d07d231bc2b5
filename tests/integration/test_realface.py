"""The real-face development benchmark: corpus plan, clear errors, scoring and, where the
development photographs are present, a tiny corpus built from real photos and preprocessed
by the product's ChaLearn source."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.realface import build as rf
from benchmarks.realface import run as rfrun

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT.parent / "shared" / "data" / "lfw-dev"


def fake_photos(folder: Path, people: int = 8, per: int = 3) -> Path:
    """A photo folder with labels.csv and tiny images (the plan never reads pixels)."""
    import cv2

    (folder / "images").mkdir(parents=True)
    rows = ["image,person,gender,race"]
    rng = np.random.default_rng(0)
    for i in range(people):
        for k in range(per + i % 2):
            name = f"P{i:02d}_{k:04d}.jpg"
            cv2.imwrite(str(folder / "images" / name),
                        rng.integers(0, 255, (250, 250, 3), dtype=np.uint8))
            rows.append(f"{name},P{i:02d},{'FM'[i % 2]},{'caucasian' if i % 3 else ''}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_plan_is_deterministic_balanced_and_split_by_person(tmp_path):
    people = rf.read_photos(fake_photos(tmp_path / "photos"))
    s = rf.Settings(people=8, clips_per_person=3, seed=4)
    jobs, clips, truth = rf.plan(people, s, tmp_path / "a")
    jobs2, _, truth2 = rf.plan(people, s, tmp_path / "b")
    assert [j["transcript"] for j in jobs] == [j["transcript"] for j in jobs2]
    assert [t["merit_clip"] for t in truth] == [t["merit_clip"] for t in truth2]
    assert len(jobs) == 24 and sum(t["gender"] for t in truth) == 12
    # a person's clips: different photos, one setting, one voice, one official split
    by_person: dict[str, list] = {}
    for j, t in zip(jobs, truth, strict=True):
        by_person.setdefault(t["person"], []).append((j, t))
    for items in by_person.values():
        assert len({j["photo"] for j, _ in items}) == 3
        assert len({j["voice"] for j, _ in items}) == 1
        assert len({t["official_split"] for _, t in items}) == 1
        assert all(np.array_equal(items[0][0]["setting"]["bg_top"], j["setting"]["bg_top"])
                   for j, _ in items)
    # the label is biased toward men on top of the merit: its logit minus the clip's merit
    # is +bias for men and -bias for women
    for t in truth:
        shift = math.log(t["label"] / (1 - t["label"])) - t["merit_clip"]
        assert shift == pytest.approx(s.label_bias * (1 if t["gender"] else -1), abs=1e-4)
    # unknown race stays unknown; caucasian maps to the ChaLearn group
    assert {c["ethnicity"] for c in clips.values()} == {None, 1}


def test_strong_answers_follow_merit():
    rng = np.random.default_rng(0)
    s = rf.Settings()

    def strong_share(merit):
        texts = [rf.transcript(rng, merit, 0, s) for _ in range(300)]
        return np.mean([sum(x in t for x in rf.STRONG) / 2 for t in texts])

    # a gendered sentence takes a slot in 15 % of the clips
    assert strong_share(1.5) > 0.65 > 0.2 > strong_share(-1.5)


def test_missing_photos_and_missing_espeak_are_clear_errors(tmp_path, monkeypatch, capsys):
    assert rf.main(["--photos", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(rf.BuildError, match="espeak-ng is not installed.*apt-get install"):
        rf.espeak_version()
    fake_photos(tmp_path / "photos", people=4)
    assert rf.main(["--photos", str(tmp_path / "photos"), "--cache", str(tmp_path / "c"),
                    "--people", "6"]) == 2
    assert "espeak-ng" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_too_few_people_of_a_gender_is_named(tmp_path):
    people = rf.read_photos(fake_photos(tmp_path / "photos", people=6))
    with pytest.raises(rf.BuildError, match="4 people of each gender.*3 women"):
        rf.plan(people, rf.Settings(people=8), tmp_path / "x")


def test_merit_figures_and_the_table():
    truth = {f"c{i}": {"merit_clip": str(i), "merit": str(i // 2), "label": "0.5",
                       "gender": str(i % 2), "person": f"p{i // 2}"} for i in range(8)}
    pred = {f"c{i}": 2.0 * i + 1 for i in range(8)}
    m = rfrun.merit_figures(pred, truth)
    assert m["realface/pearson_merit"] == pytest.approx(1.0)
    assert m["realface/test_clips"] == 8
    with pytest.raises(ValueError, match="not in truth.csv"):
        rfrun.merit_figures({"other": 1.0}, truth)
    runs = {f"adversarial-s{s}": {"leak/fused/gender/clip/bal_acc": v,
                                  "leak/fused/gender/person/bal_acc": 1.0,
                                  "fair/gender/dp_ratio": 0.5 + 0.1 * s,
                                  "realface/pearson_merit": 0.4, "test/pearson": 0.6,
                                  "erase/kept_variance": 0.9 - 0.1 * s}
            for s, v in enumerate((0.9, 0.8, 0.7))}
    md = rfrun.table(runs, None)
    row = next(line for line in md.splitlines() if line.startswith("| adversarial"))
    assert "| 3 |" in row and "0.800 ± 0.100 (0.900) / 1.000 ± 0.000 (1.000)" in row
    assert "0.600 ± 0.100 (0.500)" in row  # DP ratio: the worst seed is the lowest
    assert row.endswith("| 0.800 ± 0.100 (0.700) |")  # kept variance of h, the lowest worst


def test_a_run_is_the_command_a_user_types(tmp_path):
    cmd = rfrun.train_command("adversarial-whole-proxy", 2, tmp_path / "corpus", tmp_path / "out",
                              ["trainer.max_epochs=1"])
    assert cmd[1:4] == ["--no-print-directory", "train", "EXP=adversarial"]
    args = cmd[4]
    assert args.startswith("ARGS=data.source=chalearn data.chalearn.root=")
    for key in ("seed=2", "model.face_proxy_components=0", "trainer.max_epochs=1",
                "resume=auto", f"output_dir={tmp_path / 'out' / 'adversarial-whole-proxy-s2'}"):
        assert key in args


needs_photos = pytest.mark.skipif(
    not (PHOTOS / "labels.csv").is_file() or shutil.which("espeak-ng") is None,
    reason="the development photographs (../shared/data/lfw-dev) or espeak-ng are absent: "
           "the real-photo corpus test runs where both are present")


@needs_photos
def test_a_tiny_corpus_of_real_photos_builds_and_preprocesses(tmp_path):
    from data_modules.schema import SPLITS
    from data_modules.shards import open_streaming
    from data_modules.sources import build_shards
    from fair_lightning.config import load_config

    s = rf.Settings(people=6, clips_per_person=3, seed=1)
    root = rf.build(s, PHOTOS, tmp_path / "cache", workers=1, log=lambda m: None)
    assert rf.build(s, PHOTOS, tmp_path / "cache", log=lambda m: None) == root  # cached
    meta = json.loads((root / "corpus.json").read_text())
    assert meta["clips"] == 18 and len(list(root.rglob("*.mp4"))) == 18
    with open(root / "truth.csv", newline="") as f:
        truth = {r["clip"]: r for r in csv.DictReader(f)}
    ov = {"data.source": "chalearn", "data.chalearn.root": str(root),
          "data.cache_dir": str(tmp_path / "shards"), "data.preprocess.workers": "1"}
    cfg = load_config("baseline", list(ov.items())).data
    shards = build_shards(cfg)
    report = json.loads(Path(json.loads((shards / "meta.json").read_text())
                             ["preprocess_report"]).read_text())
    seen = {}
    for split in SPLITS:
        ds = open_streaming(shards / split, shuffle=False, seed=0)
        for i in range(len(ds)):
            r = ds[i]
            seen[r["clip_id"]] = r
    # every clip made it (Haar finds the real faces) or is a counted skip
    assert len(seen) + sum(report["skipped"].values()) == 18
    assert len(seen) >= 16
    for clip, r in seen.items():
        assert int(r["gender"]) == int(truth[clip]["gender"])
        assert r["audio"].shape[0] > 10 and r["faces"].shape[1] == 3


def test_a_finished_run_is_reused_only_with_the_same_settings(tmp_path):
    from fair_lightning.config import load_config, parse_overrides, save_config

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    keys = rfrun.train_keys("adversarial", 0, corpus, out, ["data.preprocess.workers=1"])
    run_dir = out / "adversarial-s0"
    run_dir.mkdir(parents=True)
    save_config(load_config("adversarial", parse_overrides(keys)[1]), run_dir / "config.yaml")
    # how it runs may differ (workers); what it computes may not
    same = rfrun.train_keys("adversarial", 0, corpus, out, ["data.preprocess.workers=2"])
    assert rfrun.stale_settings("adversarial", run_dir, same) == []
    other = rfrun.train_keys("adversarial", 0, corpus, out, ["adversary.weight=0.5"])
    differ = rfrun.stale_settings("adversarial", run_dir, other)
    assert len(differ) == 1 and differ[0].startswith("adversary.weight: 0.15 -> 0.5")


def test_the_label_reference_gives_the_dp_ratio_a_merit_faithful_score_reaches():
    """On few test people the true merit itself may favour a group in the top 30 %: the
    reference says what DP ratio a score equal to merit (or to the label) would have."""
    truth = {}
    for p in range(40):
        for k in range(2):
            man = p % 2
            merit = (1.0 if man else 0.0) + 0.01 * p  # the men lead on merit here
            truth[f"p{p}c{k}"] = {"person": f"p{p}", "gender": str(man),
                                  "merit_clip": str(merit), "merit": str(merit),
                                  "label": str(merit + 0.1 * k)}
    test = [c for c in truth if int(truth[c]["person"][1:]) >= 20]
    ref = rfrun.label_reference(test, truth)
    assert ref["merit/gender_dp_ratio"] == 0.0 and ref["label/gender_dp_ratio"] == 0.0
    assert ref["label/pearson_merit"] > 0.9
    md = rfrun.table({}, ref)
    assert "with the true merit as the score 0.000" in md
