"""`fair-predict` end to end, and checkpoints that every command reads wherever they lie:
the run's own test split scored again gives its predictions.csv; drawn raw clips of new
people are scored with unreadable ones counted; a checkpoint copied out of its run and an
audit's erased.ckpt audit and score with their own config and eraser; bad inputs give one
`error:` line, exit 2 and no file."""

from __future__ import annotations

import csv
import json
import shutil
import zlib
from pathlib import Path

import pytest
import torch

from benchmarks.rawmedia import make_chalearn_corpus, make_manifest_corpus
from fair_lightning.cli.audit import main as audit_main
from fair_lightning.cli.predict import main as predict_main
from fair_lightning.config import load_config
from fair_lightning.experiment import run
from fair_lightning.lightning.checkpoint import CONFIG_KEY, DECISION_KEY
from tests.conftest import make_records, tiny_overrides


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    out = {}
    for exp in ("adversarial", "baseline"):
        ov = dict(tiny_overrides(tmp / exp, **{"data.cache_dir": str(tmp / "cache"),
                                               "data.derived_cache_dir": str(tmp / "derived")}))
        out[exp] = run(load_config(exp, list(ov.items())))
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _predict(capsys, *args) -> tuple[int, str]:
    code = predict_main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_the_runs_test_split_scored_again_is_its_predictions(runs, tmp_path, capsys):
    run_dir = runs["adversarial"]
    out = tmp_path / "s.csv"
    assert predict_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"scores: {out}")
    got, want = _rows(out), _rows(run_dir / "predictions.csv")
    assert [r["clip_id"] for r in got] == [r["clip_id"] for r in want]
    assert [r["score"] for r in got] == [r["score"] for r in want]  # as written, exactly
    assert all(zlib.crc32(g["person"].encode()) == int(w["identity"])
               for g, w in zip(got, want, strict=True))
    side = json.loads(out.with_suffix(".json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    # the run's own cut-off, written into the tested checkpoint at test time
    assert side["decision"]["cutoff"] == pytest.approx(summary["fair/invite_cutoff"])
    assert "top 30%" in side["decision"]["rule"]
    # the run's report states the same cut-off
    assert f"at least {summary['fair/invite_cutoff']:.6f}" in (run_dir / "report.md").read_text()
    invited = sum(int(r["invite"]) for r in got)
    assert invited == side["decision"]["invited"] == round(0.3 * len(got))
    assert all((float(r["score"]) >= round(side["decision"]["cutoff"], 6)) == (r["invite"] == "1")
               for r in got)
    assert side["data"]["split"] == "test" and side["data"]["scored"] == len(got)
    assert len(side["checkpoint_sha256"]) == 64 and side["clips_per_s"] > 0
    # the scoring batches carry no sensitive attribute: reading one raises
    from fair_lightning.predict import collate_with_people

    batch, people = collate_with_people(
        [{**r, "identity": f"p{i}"} for i, r in enumerate(make_records(2, 1))])
    with pytest.raises(Exception, match="sensitive"):
        batch.sensitive  # noqa: B018
    assert people == ["p0", "p1"]
    # a fixed threshold instead of the run's cut-off
    out2 = tmp_path / "t.csv"
    assert predict_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out2}",
                         "threshold=0.0"]) == 0
    assert all(r["invite"] == "1" for r in _rows(out2))
    assert json.loads(out2.with_suffix(".json").read_text())["decision"]["cutoff"] == 0.0
    # another split of the run's data
    out3 = tmp_path / "v.csv"
    assert predict_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out3}",
                         "split=val"]) == 0
    assert {r["clip_id"] for r in _rows(out3)}.isdisjoint(r["clip_id"] for r in got)


def test_make_predict_is_the_command_a_user_runs(runs, tmp_path):
    """`make predict` as the README prints it: the default output beside the run, and OUT."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    ckpt = runs["adversarial"] / "checkpoints" / "last.ckpt"
    venv = f"VENV={Path(sys.executable).parent.parent}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run(["make", "-s", "predict", f"CKPT={ckpt}", venv], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    written = Path(r.stdout.strip().splitlines()[-1].removeprefix("scores: "))
    assert written.parent == runs["adversarial"] and written.name.startswith("scores-")
    assert _rows(written) == _rows(_in_place(runs["adversarial"], tmp_path))
    out = tmp_path / "mine.csv"
    r = subprocess.run(["make", "-s", "predict", f"CKPT={ckpt}", f"OUT={out}", "SPLIT=val",
                        venv], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
    written.unlink()
    written.with_suffix(".json").unlink()


def test_a_checkpoint_copied_out_of_its_run_audits_and_scores_as_in_place(runs, tmp_path,
                                                                          capsys):
    run_dir = runs["adversarial"]
    elsewhere = tmp_path / "kept" / "model.ckpt"
    elsewhere.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", elsewhere)
    assert predict_main([f"ckpt={elsewhere}", f"out={tmp_path / 'copy.csv'}"]) == 0
    assert _rows(tmp_path / "copy.csv") == _rows(_in_place(run_dir, tmp_path))
    audit = tmp_path / "audit"
    assert audit_main([f"ckpt={elsewhere}", f"output_dir={audit}", "probe.bootstrap=50"]) == 0
    a = json.loads((audit / "summary.json").read_text())
    t = json.loads((run_dir / "summary.json").read_text())
    assert a["test/pearson"] == pytest.approx(t["test/pearson"], abs=1e-6)
    assert a["leak/erased/gender/clip/bal_acc"] == pytest.approx(
        t["leak/erased/gender/clip/bal_acc"])
    # without an output_dir the audit lands beside the copy
    capsys.readouterr()
    assert audit_main([f"ckpt={elsewhere}", "probe.bootstrap=50"]) == 0
    printed = capsys.readouterr().out.strip().rsplit("audit dir: ", 1)[1]
    assert Path(printed).parent == elsewhere.parent.resolve()


def _in_place(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "in-place.csv"
    if not out.exists():
        assert predict_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}"]) == 0
    return out


def test_an_older_checkpoint_works_in_its_run_and_says_what_it_lacks_elsewhere(runs, tmp_path,
                                                                              capsys):
    old_run = tmp_path / "old-run"
    shutil.copytree(runs["adversarial"], old_run)
    ckpt = old_run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert CONFIG_KEY in saved and DECISION_KEY in saved
    del saved[CONFIG_KEY], saved[DECISION_KEY]
    torch.save(saved, ckpt)
    # in its run directory: the run's config.yaml, the cut-off from its predictions.csv
    assert predict_main([f"ckpt={ckpt}", f"out={tmp_path / 'old.csv'}"]) == 0
    assert _rows(tmp_path / "old.csv") == _rows(_in_place(runs["adversarial"], tmp_path))
    assert "predictions.csv" in json.loads((tmp_path / "old.json").read_text())["decision"][
        "from"]
    alone = tmp_path / "alone" / "old.ckpt"
    alone.parent.mkdir()
    shutil.copy(ckpt, alone)
    code, err = _predict(capsys, f"ckpt={alone}", f"out={tmp_path / 'x.csv'}")
    assert code == 2 and "carries no config" in err and not (tmp_path / "x.csv").exists()


def test_an_audits_erased_ckpt_keeps_its_eraser_wherever_it_lies(runs, tmp_path, capsys):
    ckpt = runs["baseline"] / "checkpoints" / "last.ckpt"
    first = tmp_path / "labels"
    assert audit_main([f"ckpt={ckpt}", f"output_dir={first}", "probe.bootstrap=50",
                       "erasure.enabled=true", "erasure.proxy=labels", "erasure.rank=5",
                       "erasure.head_dims=0"]) == 0
    erased = tmp_path / "moved" / "erased.ckpt"
    erased.parent.mkdir()
    shutil.copy(first / "erased.ckpt", erased)
    again = tmp_path / "again"
    assert audit_main([f"ckpt={erased}", f"output_dir={again}", "probe.bootstrap=50"]) == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, again))
    assert not (again / "erased.ckpt").exists()  # its own eraser, not refitted, not dropped
    assert b["test/pearson"] == pytest.approx(a["test/pearson"], abs=1e-6)
    assert b["leak/erased/gender/clip/bal_acc"] == pytest.approx(
        a["leak/erased/gender/clip/bal_acc"])
    out = tmp_path / "erased.csv"
    assert predict_main([f"ckpt={erased}", f"out={out}"]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["decision"]["cutoff"] == pytest.approx(a["fair/invite_cutoff"])
    assert "audit" in side["decision"]["from"]
    base = _rows(runs["baseline"] / "predictions.csv")
    scores = _rows(out)
    assert [r["clip_id"] for r in scores] == [r["clip_id"] for r in base]
    assert [r["score"] for r in scores] != [r["score"] for r in base]  # the eraser scores


def test_bad_inputs_give_one_error_line_and_no_file(runs, tmp_path, capsys):
    ckpt = runs["adversarial"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "bad.csv"
    cases = [
        ([f"ckpt={tmp_path / 'missing.ckpt'}"], "missing.ckpt"),
        ([], "missing ckpt="),
        ([f"ckpt={_garbage(tmp_path)}"], "not a readable checkpoint"),
        ([f"ckpt={ckpt}", "data.text_model=other-model"], "data.text_model='other-model'"),
        ([f"ckpt={ckpt}", "data.preprocess.image_size=48"], "data.preprocess.image_size=48"),
        ([f"ckpt={ckpt}", "erasure.rank=3"], "erasure.* differ"),
        ([f"ckpt={ckpt}", "split=all"], "one split at a time"),
        ([f"ckpt={ckpt}", f"data={tmp_path / 'nowhere.csv'}"], "no such file or folder"),
        ([f"ckpt={ckpt}", "model.fused_dim=8"], "model.fused_dim"),
        ([f"ckpt={ckpt}", "no.such_key=1"], "no.such_key"),
        ([f"ckpt={ckpt}", "threshold=high"], "not a number"),
    ]
    for args, words in cases:
        code, err = _predict(capsys, *args, f"out={out}")
        assert code == 2, (args, err)
        assert err.startswith("error: ") and words in err, (args, err)
        assert not out.exists() and not out.with_suffix(".json").exists()
    # an existing output is refused, not overwritten
    out.write_text("mine\n")
    code, err = _predict(capsys, f"ckpt={ckpt}", f"out={out}")
    assert code == 2 and "exists" in err and out.read_text() == "mine\n"


def _garbage(tmp_path: Path) -> Path:
    p = tmp_path / "corrupt.ckpt"
    p.write_bytes(b"PK\x03\x04 not really a checkpoint")
    return p


def _drop_columns(manifest: Path, keep: tuple[str, ...]) -> Path:
    rows = _rows(manifest)
    out = manifest.with_name(f"{manifest.stem}-{len(keep)}.csv")
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(keep))
        w.writeheader()
        w.writerows({k: r[k] for k in keep} for r in rows)
    return out


def test_a_manifest_of_new_people_is_scored_and_unreadable_clips_are_counted(runs, tmp_path,
                                                                            capsys):
    """A model trained on drawn raw clips scores a manifest of other people (no label or
    attribute column) and a ChaLearn folder; a corrupt clip and a missing one are skipped,
    counted and named; clips whose features do not fit a model are refused."""
    train = make_manifest_corpus(tmp_path / "train", people=12, clips_per_person=2, seed=0,
                                 seconds=1.0)
    ov = {"data.source": "manifest", "data.manifest.path": str(train),
          "data.cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"),
          "trainer.max_epochs": "1", "data.batch_size": "4", "probe.enabled": "false",
          "logger.wandb.mode": "disabled", "data.preprocess.detector": "haar",
          "data.preprocess.face_embedding": "none"}
    run_dir = run(load_config("baseline", list(ov.items())))
    new = make_manifest_corpus(tmp_path / "new", people=4, clips_per_person=2, seed=7,
                               seconds=1.0)
    scoring = _drop_columns(new, ("clip", "person", "transcript"))
    rows = _rows(scoring)
    (new.parent / rows[0]["clip"]).write_bytes(b"\x00" * 64)  # truncated video
    (new.parent / rows[1]["clip"]).unlink()
    out = tmp_path / "scores.csv"
    assert predict_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"data={scoring}",
                         f"out={out}", "data.preprocess.workers=1"]) == 0
    got = _rows(out)
    assert len(got) == len(rows) - 2
    assert {r["person"] for r in got} == {r["person"] for r in rows[2:]}
    assert all(0.0 <= float(r["score"]) <= 1.0 and r["invite"] in ("0", "1") for r in got)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["data"]["split"] == "all" and side["data"]["skipped"] == 2
    assert set(side["data"]["skipped_by_reason"]) == {"missing_file", "decode_error"} or \
        set(side["data"]["skipped_by_reason"]) == {"missing_file", "empty_file"}
    assert {s["clip_id"] for s in side["data"]["skipped_clips"]} == {
        Path(r["clip"]).with_suffix("").as_posix().replace("/", "__") for r in rows[:2]}
    # a manifest without transcripts: one error line naming the column
    bare = _drop_columns(new, ("clip", "person"))
    code, err = _predict(capsys, f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
                         f"data={bare}", f"out={tmp_path / 'bare.csv'}")
    assert code == 2 and "transcript" in err and not (tmp_path / "bare.csv").exists()
    # the same clips, preprocessed at the run's settings, do not fit the synthetic model's
    # 16-pixel face crops: refused, naming both sizes
    code, err = _predict(capsys, f"ckpt={runs['adversarial'] / 'checkpoints' / 'last.ckpt'}",
                         f"data={scoring}", f"out={tmp_path / 'synthetic.csv'}")
    assert code == 2 and "face crops are (32, 32) pixels" in err and "16 x 16" in err
    assert not (tmp_path / "synthetic.csv").exists()
    # a ChaLearn folder: its test split by default (the run's identity split), or all of it
    folder = tmp_path / "chalearn"
    truth = make_chalearn_corpus(folder, people=6, clips_per_person=2, seed=3, seconds=1.0)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert predict_main([f"ckpt={ckpt}", f"data={folder}", f"out={tmp_path / 'all.csv'}",
                         "split=all"]) == 0
    assert predict_main([f"ckpt={ckpt}", f"data={folder}", f"out={tmp_path / 'test.csv'}"]) == 0
    every = {r["clip_id"] for r in _rows(tmp_path / "all.csv")}
    test = {r["clip_id"] for r in _rows(tmp_path / "test.csv")}
    assert every == set(truth) and test and test < every
    assert json.loads((tmp_path / "test.json").read_text())["data"]["split"] == "test"
