"""Exact resume of a killed or requeued run, in the same run directory.

A run directory holds one run. `resume=auto` continues it from its latest checkpoint (or
starts it when it has none yet); `resume=<ckpt>` continues from that checkpoint, in the
run directory that holds it. What shapes the rest of the trajectory is restored:

* by Lightning: weights, optimizers, schedulers, step/epoch counters and the streaming
  loader's position inside the epoch (litdata's loader has a state);
* by the module (`RESUME_KEY` in the checkpoint, one entry per DDP rank): the RNG states,
  the adversary's face banks, the dependence queue and the running training metrics;
* by `RunPosition`, a callback with its own state in the checkpoint: the CSV log's rows
  written before the checkpoint (the log keeps those, and those after it that the resumed
  run does not log again) and the last validation metrics;
* here: W&B resumes the run id recorded in `run.json`.

Checkpoints are written to a temporary sibling and renamed (`AtomicCheckpointIO`), so a
kill never leaves half a checkpoint for `resume=auto` to pick.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from data_modules.files import atomic_write, remove_stale

log = logging.getLogger(__name__)

RESUME_KEY = "fair_lightning_resume"
RUN_RECORD = "run.json"
REQUEUE_CKPT = "requeue.ckpt"
# keys a resumed run may set differently: how it is watched, not what it computes
MAY_CHANGE = ("resume", "output_dir", "trainer.enable_progress_bar", "logger.wandb.mode",
              "logger.wandb.log_model")


class ResumeError(ValueError):
    """A resume that cannot continue the same run; the message says why."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file in the checkpoint's folder, then rename. (Lightning's
    own transaction stages the file in the system temp folder and moves it across file
    systems, which is a copy, and a kill leaves the temporary behind.)"""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)  # what a killed writer of this file left
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class RunPosition(L.Callback):
    """Where the run's outputs stood at a checkpoint, kept in it as this callback's state:
    the rows of csv/metrics.csv written so far (a resumed start continues the file from
    there) and the last validation metrics (what a run resumed after its last epoch, which
    validates nothing, reports)."""

    def __init__(self, csv_logger=None):
        self.csv = csv_logger
        self.val_metrics: dict[str, float] = {}
        self._trainer = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        t = self._trainer
        val = {k: float(v) for k, v in (t.callback_metrics if t else {}).items()
               if k.startswith("val/")}
        rank0 = t is None or t.is_global_zero
        return {"csv_rows": self.csv.rows_written() if self.csv and rank0 else None,
                "val_metrics": val or dict(self.val_metrics)}

    def load_state_dict(self, state: dict) -> None:
        self.val_metrics = dict(state.get("val_metrics", {}))
        if self.csv is not None and state.get("csv_rows") is not None:
            self.csv.continue_from(state["csv_rows"])


class EndResumedEpoch(L.Callback):
    """litdata's loader, restored mid-epoch, replays its saved position at every new
    iteration until one runs to exhaustion; Lightning ends an epoch by counting batches,
    without exhausting it. So the epoch after a resume would repeat the resumed epoch's
    order. Clearing the flag at the epoch's end gives the next epoch its own shuffle, as in
    the run that was not interrupted."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loader = trainer.train_dataloader
        if getattr(loader, "restore", False):
            loader.restore = False


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """Every global RNG this process draws from, as tensors and ints (weights_only-safe)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, inner, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "state": list(inner), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- metrics
def metric_states(container: torch.nn.Module) -> list[dict]:
    """The accumulated state of every torchmetrics metric under `container`, in order."""
    from torchmetrics import Metric, MetricCollection

    return [{"state": dict(m.metric_state), "updates": int(m.update_count)}
            for m in container.modules() if isinstance(m, Metric)
            and not isinstance(m, MetricCollection)]


def load_metric_states(container: torch.nn.Module, states: list[dict]) -> None:
    from torchmetrics import Metric, MetricCollection

    metrics = [m for m in container.modules() if isinstance(m, Metric)
               and not isinstance(m, MetricCollection)]
    if len(metrics) != len(states):
        raise ResumeError(f"the checkpoint holds {len(states)} metric states, the model "
                          f"{len(metrics)}")
    for m, s in zip(metrics, states, strict=True):
        for name, value in s["state"].items():
            setattr(m, name, value)
        m._update_count = s["updates"]  # torchmetrics has no public setter for it
        m._computed = None


# --------------------------------------------------------------------------- files
def checkpoint_candidates(run_dir: Path) -> list[Path]:
    ckpts = run_dir / "checkpoints"
    found = [ckpts / "last.ckpt", ckpts / REQUEUE_CKPT, *sorted(ckpts.glob("periodic/*.ckpt"))]
    return [p for p in found if p.is_file()]


def _progress(path: Path) -> tuple[int, float]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0)), path.stat().st_mtime


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint furthest into training (optimizer steps, then time written)."""
    found = checkpoint_candidates(run_dir)
    return max(found, key=_progress) if found else None


def run_dir_of(ckpt: Path) -> Path:
    """checkpoints/last.ckpt and checkpoints/periodic/batch-N.ckpt -> the run directory."""
    for parent in ckpt.resolve().parents:
        if parent.name == "checkpoints":
            return parent.parent
    raise ResumeError(f"resume={ckpt}: not a run's checkpoint (it is not under a "
                      "checkpoints/ folder of a run directory)")


def plan(cfg, run_dir: Path) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None) for `cfg.resume`; raises
    ResumeError when the resume would not continue the same run."""
    import yaml
    from omegaconf import OmegaConf

    from fair_lightning.config import config_differences

    how = cfg.resume
    if how != "auto":
        ckpt = Path(how)
        if not ckpt.is_file():
            raise ResumeError(f"resume={how}: no such checkpoint file")
        owner = run_dir_of(ckpt)
        if cfg.output_dir and Path(cfg.output_dir).resolve() != owner.resolve():
            raise ResumeError(f"resume={how} continues the run in {owner}, but output_dir is "
                              f"{cfg.output_dir}; leave output_dir unset or set it to {owner}")
        run_dir = owner
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        if how != "auto":
            raise ResumeError(f"resume={how}: {run_dir} holds no run")
        return run_dir, None  # nothing yet: the first start of a resumable run
    if (run_dir / "summary.json").is_file():
        raise ResumeError(f"{run_dir} holds a finished run (summary.json): nothing to resume")
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ResumeError(f"{run_dir} holds no config.yaml: it is not a run this framework "
                          "started (or it was stopped before its data passed the checks)")
    saved = yaml.safe_load(saved_path.read_text())
    diff = config_differences(saved, OmegaConf.to_container(cfg, resolve=True), MAY_CHANGE)
    if diff:
        raise ResumeError(f"resume into {run_dir} with a different configuration would mix "
                          f"two runs: {'; '.join(diff[:6])}" + (" ..." if len(diff) > 6 else "")
                          + f". Rerun with the same settings (see {saved_path}).")
    ckpt = Path(how) if how != "auto" else latest_checkpoint(run_dir)
    return run_dir, ckpt


def merge_resumed_csv(path: Path, rows_at_save: int, first_new_step: int) -> int:
    """Before a resumed run's first rows are appended to metrics.csv: keep the rows written
    before the checkpoint, and of those the killed run wrote after it, only the ones the
    resumed run will not log again (steps before its first new row: the checkpoint's own
    batch, an epoch's end). Returns how many rows were dropped."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    if not table:
        return 0
    header, body = table[0], table[1:]
    step = header.index("step") if "step" in header else None
    kept = body[:rows_at_save] + [r for r in body[rows_at_save:]
                                  if step is not None and int(float(r[step])) < first_new_step]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header, *kept])

    atomic_write(path, write)
    return len(body) - len(kept)


def record_start(run_dir: Path, ckpt: Path | None) -> dict:
    """Add this start to run.json (created on the first): the W&B run id every start of the
    run logs to, and when and from which checkpoint each start began."""
    path = run_dir / RUN_RECORD
    record = json.loads(path.read_text()) if path.is_file() else {}
    if "wandb_id" not in record:
        from wandb.sdk.lib.runid import generate_id

        # a sweep agent names the trial's run (W&B ignores any other id inside a sweep)
        record["wandb_id"] = os.environ.get("WANDB_RUN_ID") or generate_id()
        record["starts"] = []
    record["starts"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "resumed_from": str(ckpt) if ckpt else None,
                             "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    text = json.dumps(record, indent=1)
    atomic_write(path, text)
    return record


def read_record(run_dir: Path) -> dict:
    path = run_dir / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}
