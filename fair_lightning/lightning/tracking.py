"""Loggers and run-directory outputs: W&B (offline without credentials), CSV, summary.json."""

from __future__ import annotations

import csv
import numbers
import os
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from data_modules.files import atomic_write
from fair_lightning.ops.runtime import has_wandb_credentials


def resolve_wandb_mode(mode: str) -> str:
    """auto -> online with credentials else offline; an explicit WANDB_MODE env wins over auto."""
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        if env in ("online", "offline", "disabled"):
            return env
        return "online" if has_wandb_credentials() else "offline"
    if mode == "online" and not has_wandb_credentials():
        from fair_lightning.config import ConfigError

        raise ConfigError(
            "logger.wandb.mode=online but no W&B credentials were found (WANDB_API_KEY or "
            "~/.netrc); run `wandb login` or use logger.wandb.mode=auto/offline")
    return mode


class RunCSVLogger(Logger):
    """csv/metrics.csv of a run, continued across resumes (Lightning's CSVLogger starts the
    file over). Rows are buffered and appended at `save`; a column seen for the first time
    rewrites the file with the wider header (columns sorted). A resumed start is told how
    many rows its checkpoint had seen (`continue_from`, by `resume.RunPosition`), and its
    first save first drops what the killed start wrote after that checkpoint and the resumed
    run logs again (`resume.merge_resumed_csv`)."""

    def __init__(self, run_dir: str | Path, flush_every_n_steps: int = 100):
        super().__init__()
        self._run_dir = Path(run_dir)
        self.path = self._run_dir / "csv" / "metrics.csv"
        self.flush_every_n_steps = flush_every_n_steps
        self._pending: list[dict] = []
        self._keys: list[str] = []
        self._continue_from: int | None = None

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._run_dir)

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the run directory's config.yaml holds them

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        step = len(self._pending) if step is None else step
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        self._pending.append({**row, "step": step})
        if (step + 1) % self.flush_every_n_steps == 0:
            self.save()

    def continue_from(self, rows: int) -> None:
        """A resumed start: the checkpoint it continues had seen `rows` rows of the file."""
        self._continue_from = rows

    @rank_zero_only
    def save(self) -> None:
        super().save()
        if not self._pending:
            return
        from fair_lightning.lightning.resume import merge_resumed_csv

        if self._continue_from is not None:
            merge_resumed_csv(self.path, self._continue_from,
                              min(int(r["step"]) for r in self._pending))
            self._continue_from = None
        exists = self.path.is_file()
        if exists and not self._keys:
            with open(self.path, newline="") as f:
                self._keys = next(csv.reader(f), [])
        keys = sorted(set(self._keys).union(*self._pending))
        if exists and keys != self._keys:
            with open(self.path, newline="") as f:
                old = list(csv.DictReader(f))
            atomic_write(self.path, lambda tmp: _write_rows(tmp, keys, old, "w"))
        elif not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda tmp: _write_rows(tmp, keys, [], "w"))
        self._keys = keys
        _write_rows(self.path, keys, self._pending, "a")
        self._pending = []

    def rows_written(self) -> int:
        """Rows in the file after a flush: what a checkpoint written now has seen."""
        self.save()
        if not self.path.is_file():
            return 0
        with open(self.path, newline="") as f:
            return max(sum(1 for _ in csv.reader(f)) - 1, 0)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def _write_rows(path: Path, keys: list[str], rows: list[dict], mode: str) -> None:
    with open(path, mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        if mode == "w":
            w.writeheader()
        w.writerows(rows)


def wandb_headline(metrics: dict) -> dict:
    """The scalars W&B charts: every metric except the per-attacker figures (`probe/...`,
    in the W&B leakage table), the selected attacker's fields other than its balanced
    accuracy (interval, chance, CV score: in the table too) and the per-group fairness
    figures (`fair/gender/mae/0`). Tables and images pass. summary.json and metrics.csv keep
    everything."""
    out = {}
    for key, value in metrics.items():
        if not isinstance(value, numbers.Number | str):  # tables and images pass
            out[key] = value
            continue
        head, _, rest = key.partition("/")
        if head.endswith("probe"):
            continue
        if head.endswith("leak") and not (key.endswith("/bal_acc") or
                                          rest.startswith(("skipped/", "refused/"))):
            continue
        if head.endswith("fair") and rest.count("/") > 1:
            continue
        out[key] = value
    return out


def _headline_wandb_logger(**kwargs):
    """Lightning's WandbLogger, charting `wandb_headline` of what it is given."""
    from lightning.pytorch.loggers import WandbLogger

    class HeadlineWandbLogger(WandbLogger):
        def log_metrics(self, metrics, step=None):
            super().log_metrics(wandb_headline(metrics), step)

    return HeadlineWandbLogger(**kwargs)


def make_loggers(cfg: DictConfig, run_dir: Path, data_key: str, wandb_id: str | None = None,
                 job_type: str = "train") -> list:
    """W&B (unless disabled; `wandb_id` continues that run: a resumed run is the same W&B
    run) and CSV (`RunCSVLogger`, continued by a resumed run).

    W&B: grouped by `logger.wandb.group`, else by a sweep's group (`WANDB_RUN_GROUP`), else
    by the experiment, so a run's seeds and audits sit together; `job_type` train or audit;
    `data_key`, the data's cache folder name (`<source>-<key>`, as the datamodule found it),
    in the config as `data.cache_key`; checkpoints as model artifacts
    with `logger.wandb.log_model`."""
    loggers = []
    mode = resolve_wandb_mode(cfg.logger.wandb.mode)
    if mode != "disabled":
        # never let wandb open an interactive prompt, whatever the terminal
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_DISABLE_CODE"] = "true"
        w = cfg.logger.wandb
        group = w.group or os.environ.get("WANDB_RUN_GROUP") or cfg.experiment
        config = OmegaConf.to_container(cfg, resolve=True)
        config["data"]["cache_key"] = data_key
        name = run_dir.name if run_dir.name.startswith(cfg.experiment) else (
            f"{cfg.experiment}-{run_dir.name}")
        loggers.append(_headline_wandb_logger(
            project=w.project, entity=w.entity, group=group, tags=list(w.tags),
            name=name, save_dir=str(run_dir), mode=mode, config=config, job_type=job_type,
            log_model=w.log_model, id=wandb_id, resume="allow" if wandb_id else None,
        ))
    if cfg.logger.csv:
        loggers.append(RunCSVLogger(run_dir))
    return loggers


def finish_wandb(trainer, summary: dict, run_dir: Path) -> None:
    """Close the W&B run with the headline of `summary` as its summary, and summary.json
    and report.md as its files (every figure, for whoever reads the run in W&B)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger):
            continue
        run = lg.experiment
        run.summary.update(wandb_headline(summary))
        for name in ("summary.json", "report.md"):
            if (Path(run_dir) / name).is_file():
                run.save(str(Path(run_dir) / name), base_path=str(run_dir), policy="now")
        run.finish()
