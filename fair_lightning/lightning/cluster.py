"""SLURM: requeue before the time limit, at a point a resumed run continues from exactly.

`sbatch --signal=SIGUSR1@90 --requeue` sends SIGUSR1 to every task 90 s before the limit.
The handler only raises a flag. At a training-batch boundary (every 10th under DDP) the
ranks agree (any rank flagged counts), all of them save `checkpoints/requeue.ckpt`, rank 0 runs
`scontrol requeue <job>` and the run stops with `Requeued`. The requeued job starts the same
command with `resume=auto` in the same run directory (`runs/<experiment>/slurm-<job id>`)
and continues from that checkpoint. A signal after the last training batch (fit-end audit,
test) requeues at once: the requeued job redoes what follows `last.ckpt`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class Requeued(Exception):
    """The job was requeued; this process stops and the requeued job continues the run."""


def slurm_job_id() -> str:
    """The id `scontrol requeue` takes: `<array job>_<task>` inside a job array."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def request_requeue() -> bool:
    job = slurm_job_id()
    try:
        r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("scontrol requeue %s failed: %s", job, e)
        return False
    if r.returncode:
        log.warning("scontrol requeue %s failed (%d): %s", job, r.returncode,
                    (r.stderr or r.stdout).strip())
        return False
    log.info("requeued SLURM job %s", job)
    return True


class RequeueOnSignal(L.Callback):
    """Under DDP the ranks agree on the flag every `check_every_n_batches` batches (one small
    all-reduce; every rank counts the same batches), not after each: `--signal=...@90`
    leaves 90 s, far more than 10 batches take. A single process checks every batch."""

    def __init__(self, ckpt_path: Path, signum: int = signal.SIGUSR1,
                 check_every_n_batches: int = 10):
        self.ckpt_path = Path(ckpt_path)
        self.signum = signum
        self.check_every = max(1, int(check_every_n_batches))
        self.batches = 0  # this process's batches since it started
        self.flagged = False
        self.immediate = False  # past the last batch boundary: requeue from the handler
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.flagged = True
        log.info("signal %d: requeueing at the next batch boundary", signum)
        if self.immediate:  # no collective from a handler: rank 0 asks, every rank stops
            if self.trainer.is_global_zero:
                request_requeue()
            raise Requeued(f"requeued SLURM job {slurm_job_id()} after training; it redoes "
                           "the audit and test from last.ckpt with resume=auto")

    def setup(self, trainer, pl_module, stage: str) -> None:
        # installed once and kept to the end of the process: SIGUSR1's default action
        # would kill the job without requeueing it
        self.trainer = trainer
        if self._previous is None:
            self._previous = signal.signal(self.signum, self._handler)

    def _any_rank_flagged(self, trainer, device) -> bool:
        if trainer.world_size == 1 or not dist.is_initialized():
            return self.flagged
        flag = torch.tensor([int(self.flagged)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if trainer.world_size > 1 and self.batches % self.check_every:
            return
        if self._any_rank_flagged(trainer, pl_module.device):
            # every rank: the module gathers what differs by rank
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)
            self._requeue(saved=True, trainer=trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.immediate = True  # last.ckpt holds the finished fit
        if self.flagged:
            self._requeue(saved=False, trainer=trainer)

    def _requeue(self, saved: bool, trainer) -> None:
        ok = request_requeue() if trainer.is_global_zero else True
        if trainer.world_size > 1 and dist.is_initialized():
            flag = torch.tensor([int(ok)], device=trainer.strategy.root_device)
            dist.broadcast(flag, src=0)
            ok = bool(flag.item())
        if not ok:  # keep training: the checkpoint is there for a manual resume=auto
            self.flagged = False
            return
        where = self.ckpt_path if saved else "the last checkpoint"
        raise Requeued(f"requeued SLURM job {slurm_job_id()}; it continues from {where} "
                       "with resume=auto")
