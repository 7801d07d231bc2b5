"""Exact resume: a run killed mid-epoch (SIGKILL) or requeued by SLURM (SIGUSR1) and
continued with resume=auto ends with the same summary as the run that was never stopped."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fair_lightning.config import load_config
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _overrides(tmp_path, cache: Path, **extra) -> dict[str, str]:
    # 3 epochs of 5 batches, the adversary on from epoch 1, a resume point every 2 batches:
    # a kill after the 4th lands inside epoch 1, with lambda, queue and banks all in use
    return dict(tiny_overrides(tmp_path, **{
        "data.cache_dir": str(cache), "data.derived_cache_dir": str(cache / "derived"),
        "trainer.max_epochs": "3", "adversary.warmup_epochs": "1",
        "trainer.checkpoint_every_n_batches": "2", **extra}))


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FAIR_LIGHTNING_RUN_DIR"}
    # one thread: the float summation order, and so every number, is the same in each run
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _command(exp: str, ov: dict[str, str], *more: str) -> list[str]:
    return [sys.executable, "-m", "fair_lightning.cli.train", f"experiment={exp}",
            *[f"{k}={v}" for k, v in ov.items()], *more]


def _run(cmd, env, cwd=ROOT) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _start_and_signal(cmd, env, periodic: Path, after: int, sig: int, cwd=ROOT):
    """Start a run; send `sig` once `after` periodic checkpoints exist."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=cwd)
    deadline = time.time() + 600
    while p.poll() is None and time.time() < deadline:
        if periodic.is_dir() and len(list(periodic.glob("*.ckpt"))) >= after:
            p.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = p.communicate(timeout=600)
    return p.returncode, err


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float)
                      and math.isnan(a) and math.isnan(b))


def assert_same_run(full: dict, resumed: dict) -> None:
    """Every task, probe, leakage, fairness and selection figure equal (times differ)."""
    keys = {k for k in set(full) | set(resumed)
            if not k.startswith("time/") and k != "train/resumes"}
    differ = {k: (full.get(k), resumed.get(k)) for k in sorted(keys)
              if not _same(full.get(k), resumed.get(k))}
    assert not differ, differ
    assert full["train/batches"] == resumed["train/batches"]


def _csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")}
                for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("resume-cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    """The adversarial run that nothing stops: (run dir, summary)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    ov = _overrides(tmp, cache)
    _run(_command("adversarial", ov), _env())
    run_dir = Path(ov["output_dir"])
    return run_dir, json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("exp, extra", [
    ("adversarial", {}),  # k_disc steps, the dependence queue, a constant lambda
    ("face_discriminator", {"adversary.positive_faces": "other_clip"}),  # the face banks
])
def test_a_run_killed_mid_epoch_resumes_to_the_same_numbers(tmp_path, cache, uninterrupted,
                                                            exp, extra):
    ov = _overrides(tmp_path / "full", cache, **extra)
    if exp == "adversarial":
        full_dir, full = uninterrupted
    else:
        _run(_command(exp, ov), _env())
        full_dir = Path(ov["output_dir"])
        full = json.loads((full_dir / "summary.json").read_text())

    ov["output_dir"] = str(tmp_path / "killed")
    killed = Path(ov["output_dir"])
    cmd = _command(exp, ov, "resume=auto")
    rc, _ = _start_and_signal(cmd, _env(), killed / "checkpoints" / "periodic", 4,
                              signal.SIGKILL)
    assert rc == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "summary.json").exists()
    r = _run(cmd, _env())
    assert "continuing" in r.stderr
    assert not list(killed.rglob(".*.tmp-*"))  # what the killed writer left is cleaned
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["train/resumes"] == 1
    assert_same_run(full, resumed)
    # the log continues where the checkpoint was: no row twice, none missing
    assert _csv_rows(killed) == _csv_rows(full_dir)
    record = json.loads((killed / "run.json").read_text())
    assert len(record["starts"]) == 2 and record["starts"][1]["resumed_from"].endswith(".ckpt")


def test_resume_after_the_last_epoch_redoes_only_the_audit_and_test(tmp_path, cache,
                                                                    uninterrupted):
    """Killed after fit (in the test audit): the rerun skips training, runs the end-of-fit
    audit that the kill lost, and reports the same numbers."""
    import shutil

    ov = _overrides(tmp_path, cache)
    run_dir = Path(ov["output_dir"])
    shutil.copytree(uninterrupted[0], run_dir)
    full = uninterrupted[1]
    for name in ("summary.json", "report.md"):
        (run_dir / name).unlink()
    r = _run(_command("adversarial", ov, "resume=auto"), _env())
    assert "last.ckpt" in r.stderr
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert_same_run(full, resumed)
    assert not math.isnan(resumed["select/score"])  # the last validation came back too
    assert _csv_rows(run_dir) == _csv_rows(uninterrupted[0])


def _slurm_env(tmp_path, job: str, **extra) -> dict[str, str]:
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    scontrol = shims / "scontrol"  # records what it was asked, as a cluster would act on it
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    scontrol.chmod(0o755)
    return _env(PATH=f"{shims}:{os.environ['PATH']}", SCONTROL_LOG=str(tmp_path / "scontrol"),
                SLURM_JOB_ID=job, SLURM_JOB_NAME="fair-lightning", SLURM_NTASKS="1",
                SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1",
                SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                SLURM_NODELIST="localhost", **extra)


def test_sigusr1_checkpoints_at_a_batch_boundary_requeues_and_the_job_continues(
        tmp_path, cache, uninterrupted):
    ov = _overrides(tmp_path / "full", cache)
    full = uninterrupted[1]

    del ov["output_dir"]  # as in the sbatch script: runs/<experiment>/slurm-<job id>
    env = _slurm_env(tmp_path, "4242")
    run_dir = tmp_path / "runs" / "adversarial" / "slurm-4242"
    cmd = _command("adversarial", ov, "resume=auto")
    rc, err = _start_and_signal(cmd, env, run_dir / "checkpoints" / "periodic", 3,
                                signal.SIGUSR1, cwd=tmp_path)
    assert rc == 0, err[-3000:]
    assert "requeued SLURM job 4242" in err
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "4242"]
    assert (run_dir / "checkpoints" / "requeue.ckpt").is_file()
    assert not (run_dir / "summary.json").exists()
    # the requeued job: same id, same command
    r = _run(cmd, env, cwd=tmp_path)
    assert "requeue.ckpt" in r.stderr
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert_same_run(full, resumed)


def test_array_jobs_requeue_their_own_task(monkeypatch):
    from fair_lightning.lightning.cluster import slurm_job_id

    monkeypatch.setenv("SLURM_JOB_ID", "901")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "900")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "900_3"


# ------------------------------------------------------------------ no training needed
def _cfg(tmp_path, **extra):
    return load_config("adversarial", tiny_overrides(tmp_path, **extra))


def _saved_run(tmp_path) -> Path:
    from fair_lightning.config import save_config

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    save_config(_cfg(tmp_path), run_dir / "config.yaml")
    return run_dir


def test_resume_refuses_what_would_mix_two_runs(tmp_path):
    from fair_lightning.lightning.resume import ResumeError, plan

    run_dir = _saved_run(tmp_path)
    with pytest.raises(ResumeError, match=r"adversary.weight: 0.15 -> 2"):
        plan(_cfg(tmp_path, resume="auto", **{"adversary.weight": "2"}), run_dir)
    # how the run is watched may change
    assert plan(_cfg(tmp_path, resume="auto", **{"logger.wandb.mode": "offline"}),
                run_dir) == (run_dir, None)
    (run_dir / "summary.json").write_text("{}")
    with pytest.raises(ResumeError, match="finished run"):
        plan(_cfg(tmp_path, resume="auto"), run_dir)
    with pytest.raises(ResumeError, match="no such checkpoint"):
        plan(_cfg(tmp_path, resume=str(tmp_path / "nope.ckpt")), run_dir)
    other = tmp_path / "other" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    with pytest.raises(ResumeError, match="continues the run in"):
        plan(_cfg(tmp_path, resume=str(other)), run_dir)
    stray = tmp_path / "stray.ckpt"
    stray.write_bytes(b"")
    with pytest.raises(ResumeError, match="not a run's checkpoint"):
        plan(_cfg(tmp_path, resume=str(stray), output_dir="null"), run_dir)


def test_resume_auto_starts_a_fresh_run_and_picks_the_furthest_checkpoint(tmp_path):
    from fair_lightning.lightning.resume import latest_checkpoint, plan

    fresh = tmp_path / "fresh"
    assert plan(_cfg(tmp_path, resume="auto"), fresh) == (fresh, None)
    run_dir = _saved_run(tmp_path)
    ckpts = run_dir / "checkpoints"
    (ckpts / "periodic").mkdir()
    for name, step in (("last.ckpt", 30), ("periodic/batch-step=36.ckpt", 36),
                       ("periodic/batch-step=12.ckpt", 12)):
        torch.save({"global_step": step}, ckpts / name)
    assert latest_checkpoint(run_dir) == ckpts / "periodic" / "batch-step=36.ckpt"
    assert plan(_cfg(tmp_path, resume="auto"), run_dir) == (
        run_dir, ckpts / "periodic" / "batch-step=36.ckpt")


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path):
    from fair_lightning.lightning.resume import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "a.ckpt"
    io.save_checkpoint({"x": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"x": torch.zeros(3), "y": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))  # intact
    assert [p.name for p in path.parent.iterdir()] == ["a.ckpt"]  # no temporary left


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    from fair_lightning.lightning.resume import rng_state, set_rng_state

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_metric_states_round_trip(tmp_path):
    from torchmetrics import MeanMetric, PearsonCorrCoef
    from torchmetrics.classification import BinaryAUROC

    from fair_lightning.lightning.resume import load_metric_states, metric_states

    def metrics():
        return torch.nn.ModuleList([PearsonCorrCoef(), BinaryAUROC(), MeanMetric()])

    a = metrics()
    x, y = torch.randn(20), torch.randn(20)
    a[0].update(x, y)
    a[1].update(torch.rand(20), (y > 0).long())
    a[2].update(x)
    torch.save(metric_states(a), tmp_path / "m.pt")
    b = metrics()
    load_metric_states(b, torch.load(tmp_path / "m.pt", weights_only=True))
    for ma, mb in zip(a, b, strict=True):
        assert torch.allclose(ma.compute(), mb.compute())
        assert mb.update_count == ma.update_count


def test_progress_bar_follows_the_terminal(monkeypatch):
    from fair_lightning.config import ConfigError
    from fair_lightning.experiment import progress_bar_on

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert progress_bar_on("auto") is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_bar_on("auto") is True
    assert progress_bar_on(False) is False
    with pytest.raises(ConfigError, match="true, false or auto"):
        load_config("baseline", [("trainer.enable_progress_bar", "sometimes")])


def test_a_resume_with_another_process_count_is_refused_before_any_work(tmp_path):
    """The process count is trainer.devices x trainer.num_nodes, both settings of the run:
    a resume that changes either is refused with the key, as any other change is."""
    from fair_lightning.lightning.resume import ResumeError, plan

    run_dir = _saved_run(tmp_path)
    with pytest.raises(ResumeError, match=r"trainer.devices: 1 -> 2"):
        plan(_cfg(tmp_path, resume="auto", **{"trainer.devices": "2"}), run_dir)
    with pytest.raises(ResumeError, match=r"trainer.num_nodes: 1 -> 2"):
        plan(_cfg(tmp_path, resume="auto", **{"trainer.num_nodes": "2"}), run_dir)
