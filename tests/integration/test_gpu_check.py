"""The GPU check script: its whole path on the CPU (a short bf16 fit, the audit in the run,
the CPU audit of the same checkpoint in another process), and its skip without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _run(tmp_path, *args):
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"),
                        "--cache", str(tmp_path / "cache"), *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp_path / "out" / "gpu_check.json").read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip is for machines without CUDA")
def test_without_a_gpu_the_check_says_so_and_runs_nothing(tmp_path):
    r = _run(tmp_path)
    assert "no CUDA device" in r["skipped"] and "fit" not in r
    assert not (tmp_path / "out" / "run").exists()


def test_the_check_runs_a_bf16_fit_and_audits_its_checkpoint_twice(tmp_path):
    r = _run(tmp_path, "--device", "cpu", "--people", "40", "--epochs", "1")
    fit, cpu, agree = r["fit"], r["cpu_audit"], r["agreement"]
    assert fit["precision"] == "bf16-mixed" and fit["epochs"] == 1
    assert fit["clips_per_s"] > 0 and fit["fit_end_audit_s"] > 0
    # every layer x attribute x level scored by both audits; on one device they agree exactly
    assert agree["scores"] == len([k for k in fit["leaks"] if k.endswith("/bal_acc")]) >= 16
    assert agree["max_abs_diff"] == 0.0 and agree["attackers_differ"] == 0
    assert (tmp_path / "out" / "cpu-audit" / "summary.json").is_file() and cpu["audit_s"] > 0
