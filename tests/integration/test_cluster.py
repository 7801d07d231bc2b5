"""experiments/cluster/train.sbatch itself, run by bash under a stand-in `srun` that starts
its tasks on this machine with the SLURM_* variables srun sets: 2 tasks are 2 DDP ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_ddp import _train as train_single
from tests.integration.test_resume import _same, _slurm_env

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "experiments" / "cluster" / "train.sbatch"

SRUN = """#!/bin/sh
# srun on one machine: SLURM_NTASKS copies of the command, numbered as srun numbers them
while [ "${1#-}" != "$1" ]; do shift; done  # srun's own options
i=0; pids=""
while [ "$i" -lt "$SLURM_NTASKS" ]; do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" > "$SRUN_LOGS/task-$i.log" 2>&1 &
  echo $! > "$SRUN_LOGS/task-$i.pid"
  pids="$pids $!"; i=$((i + 1))
done
rc=0
for p in $pids; do wait "$p" || rc=1; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbatch(tmp_path, cache, job: str, tasks: int = 2, **extra):
    """Start the sbatch script as SLURM would on one node with `tasks` tasks."""
    env = _slurm_env(tmp_path, job)
    (tmp_path / "bin" / "srun").write_text(SRUN)
    (tmp_path / "bin" / "srun").chmod(0o755)
    logs = tmp_path / f"logs-{job}"
    logs.mkdir(exist_ok=True)
    args = {"data.cache_dir": str(cache), "data.derived_cache_dir": str(cache / "derived"),
            "data.batch_size": "8", "data.synthetic.num_identities": "80",
            "data.synthetic.clips_per_identity": "2",
            "data.synthetic.audio_seconds": "[1.0,1.5]", "data.synthetic.image_size": "16",
            "trainer.max_epochs": "2", "probe.bootstrap": "50", "logger.wandb.mode": "disabled",
            **extra}
    env.update(SLURM_NTASKS=str(tasks), SLURM_NTASKS_PER_NODE=str(tasks),
               SLURM_SUBMIT_DIR=str(tmp_path), SRUN_LOGS=str(logs), MASTER_PORT=str(_free_port()),
               PYTHON=sys.executable,
               ACCELERATOR="cpu", PRECISION="32-true", EXP="adversarial", CHECKPOINT_EVERY="2",
               ARGS=" ".join(f"{k}={v}" for k, v in args.items()))
    env.pop("SLURM_PROCID")  # srun sets these per task
    env.pop("SLURM_LOCALID")
    proc = subprocess.Popen(["bash", str(SBATCH)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    return proc, logs, tmp_path / "runs" / "adversarial" / f"slurm-{job}"


def _finish(proc, logs) -> None:
    out, err = proc.communicate(timeout=900)
    tails = "\n".join(p.read_text()[-2000:] for p in sorted(logs.glob("task-*.log")))
    assert proc.returncode == 0, f"{out}\n{err}\n{tails}"


@pytest.mark.slow
def test_sbatch_script_under_srun_runs_two_ranks_that_agree_with_one_process(tmp_path):
    cache = tmp_path / "cache"
    proc, logs, run_dir = _sbatch(tmp_path, cache, "777")
    _finish(proc, logs)
    ddp = json.loads((run_dir / "summary.json").read_text())
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (logs / "task-1.log").read_text()
    single = train_single(tmp_path, cache, 1)
    for k in ("probe/fused/gender/linear/n_eval", "probe/fused/gender/linear/n_fit",
              "probe/video/ethnicity/kernel/n_eval"):
        assert ddp[k] == single[k], k
    assert ddp["fair/gender/n/0"] + ddp["fair/gender/n/1"] == \
        single["fair/gender/n/0"] + single["fair/gender/n/1"]
    assert ddp["train/batches"] < single["train/batches"]  # each rank sees half


@pytest.mark.slow
def test_a_requeued_two_rank_job_continues_exactly(tmp_path):
    """SIGUSR1 reaches one rank only; both agree to stop at the same batch, save every
    rank's state, and the requeued job ends as the uninterrupted one."""
    cache = tmp_path / "cache"
    proc, logs, full_dir = _sbatch(tmp_path, cache, "801")
    _finish(proc, logs)
    full = json.loads((full_dir / "summary.json").read_text())

    proc, logs, run_dir = _sbatch(tmp_path, cache, "802")
    periodic = run_dir / "checkpoints" / "periodic"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if periodic.is_dir() and len(list(periodic.glob("*.ckpt"))) >= 2:
            pid = int((logs / "task-1.pid").read_text())
            subprocess.run(["kill", f"-{signal.SIGUSR1.value}", str(pid)], check=True)
            break
        time.sleep(0.02)
    _finish(proc, logs)
    assert (run_dir / "checkpoints" / "requeue.ckpt").is_file()
    assert not (run_dir / "summary.json").exists()
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "802"]
    proc, logs, _ = _sbatch(tmp_path, cache, "802")  # the requeued job
    _finish(proc, logs)
    resumed = json.loads((run_dir / "summary.json").read_text())
    differ = {k: (full[k], resumed.get(k)) for k in full
              if not k.startswith("time/") and k != "train/resumes"
              and not _same(full[k], resumed.get(k))}
    assert not differ, differ
    assert resumed["train/resumes"] == 1


def test_sbatch_kills_the_job_on_a_bad_rank_and_feeds_the_loader_its_cpus(tmp_path):
    """What the script asks of srun: --kill-on-bad-exit, and loader workers from
    --cpus-per-task (one CPU left to the training process); ARGS still wins."""
    (tmp_path / "bin").mkdir()
    record = tmp_path / "srun.txt"
    srun = tmp_path / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
           "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "7",
           "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "8"}
    subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    argv = record.read_text().splitlines()
    assert argv[0] == "--kill-on-bad-exit=1"
    assert "data.num_workers=7" in argv and "trainer.devices=4" in argv
    env["ARGS"] = "data.num_workers=2"  # a later key=value wins
    subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    argv = record.read_text().splitlines()
    assert argv.index("data.num_workers=2") > argv.index("data.num_workers=7")
    del env["SLURM_CPUS_PER_TASK"]
    subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    assert "data.num_workers=0" in record.read_text().splitlines()


class _Trainer:
    def __init__(self, world_size):
        self.world_size = world_size


def test_ddp_ranks_agree_on_the_requeue_flag_every_tenth_batch_not_every_batch(tmp_path):
    """The agreement is an all-reduce and a device sync: under DDP it runs every
    `check_every_n_batches` batches; one process reads its own flag every batch."""
    from fair_lightning.lightning.cluster import RequeueOnSignal

    for world, expected in ((2, [10, 20]), (1, list(range(1, 26)))):
        cb = RequeueOnSignal(tmp_path / "requeue.ckpt")
        asked = []
        cb._any_rank_flagged = (lambda trainer, device, cb=cb, asked=asked:
                                asked.append(cb.batches) or False)
        for i in range(25):
            cb.on_train_batch_end(_Trainer(world), type("M", (), {"device": "cpu"})(), None,
                                  None, i)
        assert asked == expected


def test_other_ranks_wait_for_the_complete_data_and_raise_what_reading_it_raises(
        tmp_path, monkeypatch):
    """A rank > 0 waits for the cache's meta.json (renamed into place with the complete
    cache), without reading half-built shards or swallowing errors; a rank 0 that never
    finishes ends the wait with an error naming the file."""
    import threading

    from fair_lightning.ops.runtime import ensure_data

    class DM:
        calls = []

        def split_dir(self, split):
            return tmp_path / "synthetic-abc" / split

        def setup(self, stage):  # the old wait retried this, swallowing every error
            self.calls.append(stage)
            raise RuntimeError("read too early")

    monkeypatch.setenv("RANK", "1")
    with pytest.raises(TimeoutError, match=r"synthetic-abc/meta\.json.*rank 0's log"):
        ensure_data(DM(), timeout_s=0.3)
    (tmp_path / "synthetic-abc").mkdir()
    later = threading.Timer(0.5, (tmp_path / "synthetic-abc" / "meta.json").write_text,
                            args=("{}",))
    later.start()
    t0 = time.time()
    ensure_data(DM(), timeout_s=30)
    later.join()
    assert time.time() - t0 >= 0.5 and DM.calls == []
