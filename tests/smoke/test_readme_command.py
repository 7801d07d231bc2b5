"""The README's main command, `make train EXP=adversarial`, as a user runs it, on a tiny
benchmark: make's own install check, the entry point, and a complete run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_make_train_adversarial_leaves_a_complete_run_directory(tmp_path):
    overrides = dict(tiny_overrides(tmp_path, **{"trainer.max_epochs": "2",
                                                 "adversary.warmup_epochs": "1",
                                                 "model.face_pretrain_epochs": "2"}))
    args = " ".join(f"{k}={v}" for k, v in overrides.items())
    r = subprocess.run(["make", "-s", "train", "EXP=adversarial", f"ARGS={args}",
                        f"VENV={Path(sys.executable).parent.parent}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = Path(overrides["output_dir"]).resolve()
    assert r.stdout.strip().splitlines()[-1] == f"run dir: {run_dir}"
    for f in ("config.yaml", "run.json", "summary.json", "report.md", "predictions.csv",
              "csv/metrics.csv", "checkpoints/last.ckpt", "plots/probe_leakage.png",
              "plots/test_scores_by_group.png"):
        assert (run_dir / f).is_file(), f
    s = json.loads((run_dir / "summary.json").read_text())
    for key in ("test/pearson", "leak/fused/gender/clip/bal_acc",
                "leak/head/gender/person/bal_acc", "fair/gender/dp_ratio", "select/score"):
        assert key in s, key
    assert 0.0 <= s["leak/fused/gender/clip/bal_acc"] <= 1.0
