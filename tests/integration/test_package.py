"""The package as a user installs it: the wheel, non-editable, in a fresh virtualenv."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(virtualenv, wheel): the wheel built from this checkout and pip-installed into a new
    virtualenv. The dependencies are this environment's, reached as a plain path (no .pth
    file of it runs, so this checkout's editable install stays out of sight)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # built from a copy of the sources: the build writes build/ and *.egg-info beside them
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "runs", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("fair_lightning-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    deps = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
    own = next((venv / "lib").glob("python*/site-packages"))
    (own / "zz_dependencies.pth").write_text(deps + "\n")
    return venv, wheel


def _run(venv, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_the_wheel_ships_the_experiments_and_no_fixtures(installed):
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    for exp in ("base", "adversarial", "baseline", "label_adversary", "face_discriminator"):
        assert f"fair_lightning/experiments/{exp}.yaml" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    for cmd in ("fair-train", "fair-audit", "fair-predict", "fair-preprocess", "fair-sweep",
                "fair-report", "fair-bench", "fair-sync"):
        assert f"{cmd} = " in scripts


def test_the_installed_commands_run_outside_the_checkout(installed, tmp_path):
    venv, _ = installed
    where = _run(venv, "python", "-c", "import fair_lightning; print(fair_lightning.__file__)",
                 cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv))  # the wheel's copy, not this checkout
    for cmd in ("fair-train", "fair-audit", "fair-predict", "fair-preprocess", "fair-report"):
        out = _run(venv, cmd, "--help", cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip(), (cmd, out.stderr)
    # a 1-epoch tiny run, from an experiment file of the user's own beside the packaged ones
    own = tmp_path / "mine.yaml"
    own.write_text("description: a user's experiment\nmodel:\n  fused_dim: 16\n")
    ov = [f"{k}={v}" for k, v in tiny_overrides(tmp_path) if not k.startswith("probe.")]
    out = _run(venv, "fair-train", f"experiment={own}", *ov, "probe.enabled=false",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test/pearson"] == summary["test/pearson"]  # a number, not NaN
    import tomllib

    release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert summary["setup/code"] == f"fair_lightning {release}"  # the wheel's, not a commit
    saved = (run_dir / "config.yaml").read_text()
    assert "experiment: mine" in saved and "fused_dim: 16" in saved
    # the installed fair-predict scores the run's test split from a copy of its checkpoint
    kept = tmp_path / "kept.ckpt"
    kept.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    out = _run(venv, "fair-predict", f"ckpt={kept}", f"out={tmp_path / 'scores.csv'}",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    scored = (tmp_path / "scores.csv").read_text().splitlines()
    assert scored[0] == "clip_id,person,score,invite"
    assert len(scored) - 1 == summary["data/clips/test"]
