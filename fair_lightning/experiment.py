"""The composition root: config -> data -> module -> callbacks -> trainer, built here
once and used by every entry point (train, audit, sweep trials through train, the bench).

`run(cfg)` trains, tests, audits and reports one experiment into its run directory;
`audit(ckpt, overrides)` re-runs the audit on a saved checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from pathlib import Path

from fair_lightning.ops.runtime import set_offline_env

set_offline_env()  # before anything imports W&B or a hub client

from fair_lightning.config import (  # noqa: E402
    ConfigError,
    save_config,
)

log = logging.getLogger("fair_lightning")


def build_trainer(cfg, run_dir: Path, module, callbacks=(), loggers=None):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    from fair_lightning.lightning.cluster import RequeueOnSignal
    from fair_lightning.lightning.resume import (
        REQUEUE_CKPT,
        AtomicCheckpointIO,
        EndResumedEpoch,
        RunPosition,
    )
    from fair_lightning.lightning.tracking import RunCSVLogger

    t = cfg.trainer
    per_batch = module.optimizer_steps_per_batch
    ckpt_dir = run_dir / "checkpoints"
    # Lightning's save_last only refreshes last.ckpt when a top-k file is saved, so "last"
    # is its own callback: monitor=None keeps the latest epoch
    # fixed names, never best-v1.ckpt: a run directory holds one run
    cbs = [ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min",
                           auto_insert_metric_name=False, enable_version_counter=False),
           ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)]
    if t.checkpoint_every_n_batches > 0:
        # global_step counts optimizer steps: convert batches to steps
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir / "periodic", filename="batch-{step}",
                                   every_n_train_steps=t.checkpoint_every_n_batches * per_batch,
                                   save_top_k=-1))
    cbs.extend(callbacks)
    cbs.append(EndResumedEpoch())
    # the CSV log's position and the last validation, kept in every checkpoint
    cbs.append(RunPosition(next((lg for lg in loggers or [] if isinstance(lg, RunCSVLogger)),
                                None)))
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # our requeue handler instead of Lightning's, which checkpoints wherever the signal
        # lands (inside a step, half of its optimizer updates done)
        plugins.append(SLURMEnvironment(auto_requeue=False))
        cbs.append(RequeueOnSignal(ckpt_dir / REQUEUE_CKPT))
    strategy = t.strategy
    distributed = t.devices > 1 or t.num_nodes > 1
    if strategy in ("ddp", "auto") and distributed:
        # an adversary's several backward passes per batch each reach only some parameters:
        # DDP must look for the others (the task alone reaches them all)
        # buffers (BatchNorm statistics) stay each rank's own: DDP would copy rank 0's into
        # the others at a process's first forward only, so a resumed run (whose first
        # forward comes mid-run) would diverge from the run it continues
        strategy = DDPStrategy(find_unused_parameters=not module.automatic_optimization,
                               broadcast_buffers=False)
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps * per_batch if t.max_steps > 0 else -1,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy, precision=t.precision, deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        enable_progress_bar=progress_bar_on(t.enable_progress_bar), plugins=plugins,
        enable_model_summary=False,
        logger=loggers if loggers is not None else False,
        callbacks=cbs,
    )


def build_timing_trainer(cfg, out: Path, epochs: int, callbacks):
    """`make bench`'s Trainer: training epochs with the run's logging (CSV), without
    validation or checkpoints, on one process."""
    import lightning as L

    from fair_lightning.lightning.tracking import RunCSVLogger

    return L.Trainer(max_epochs=epochs, accelerator=cfg.trainer.accelerator, devices=1,
                     precision=cfg.trainer.precision, deterministic=cfg.trainer.deterministic,
                     limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=cfg.trainer.log_every_n_steps,
                     logger=RunCSVLogger(out), callbacks=callbacks, default_root_dir=str(out))


def build_audit_trainer(cfg, out: Path, callbacks, loggers):
    """One process testing a saved model: no checkpoints, no bar."""
    import lightning as L

    return L.Trainer(default_root_dir=str(out), accelerator=cfg.trainer.accelerator,
                     devices=1, logger=loggers, callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, deterministic=cfg.trainer.deterministic)


def build_predict_trainer(cfg, out: Path, callbacks):
    """One process scoring clips: the run's accelerator (its GPU when there is one) and
    precision, no logger, no checkpoints."""
    import lightning as L

    return L.Trainer(default_root_dir=str(out), accelerator=cfg.trainer.accelerator,
                     devices=1, precision=cfg.trainer.precision, logger=False,
                     callbacks=callbacks, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     deterministic=cfg.trainer.deterministic)


def progress_bar_on(setting) -> bool:
    """`auto`: a bar on a terminal, none in a log file (a cluster job's output)."""
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


def build_module(cfg, dims: dict):
    from fair_lightning.lightning.module import FairScorerModule

    return FairScorerModule(cfg.model, cfg.adversary, cfg.optim,
                            text_dim=dims["text"], audio_dim=dims["audio"],
                            max_epochs=cfg.trainer.max_epochs, erasure=cfg.erasure,
                            seed=cfg.seed)


def build_datamodule(cfg):
    from data_modules.datamodule import InterviewDataModule

    # only the explicit-label baseline may see gender/ethnicity while training
    return InterviewDataModule(cfg.data, seed=cfg.seed,
                               label_free=cfg.adversary.method != "label")


def analysis_callbacks(cfg, datamodule) -> list:
    from fair_lightning.lightning.fairness import OutputFairnessCallback
    from fair_lightning.lightning.probe import SensitiveAttributeProbe

    cbs = []
    if cfg.probe.enabled:
        cbs.append(SensitiveAttributeProbe(cfg.probe, datamodule, seed=cfg.seed))
    if cfg.fairness.enabled:
        cbs.append(OutputFairnessCallback(threshold=cfg.fairness.threshold,
                                          top_q=cfg.fairness.top_q,
                                          min_group_size=cfg.fairness.min_group_size))
    return cbs


def prepare_face_encoder(cfg, dm, module) -> dict[str, float]:
    """`model.face_encoder: identity`: load (or first pretrain, label-free) its weights."""
    if cfg.adversary.method != "indirect" or cfg.model.face_encoder != "identity":
        return {}
    import torch

    from fair_lightning.models.face_pretrain import identity_face_encoder
    from fair_lightning.ops.runtime import global_rank

    data = dm.cache_name  # the source and its key
    # rank 0 pretrains, on the run's GPU when it has one; the other ranks wait for its file
    gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    try:
        state, stats = identity_face_encoder(cfg.model, dm.eval_dataloader("train", sensitive=False),
                                             Path(cfg.data.derived_cache_dir) / data,
                                             data_key=data, seed=cfg.seed,
                                             device="cuda" if gpu else "cpu",
                                             rank=global_rank())
    except ValueError as e:  # e.g. one clip per person: nothing to tell people apart across
        raise ConfigError(f"model.face_encoder=identity: {e}") from None
    module.adversary.face_encoder.load_state_dict(state)
    return stats


def preflight(cfg, run_dir: Path) -> None:
    """What can fail before any work, checked before any work: the run directory, the
    accelerator, W&B credentials. Raises ConfigError; nothing is created."""
    import os

    import torch

    from fair_lightning.lightning.tracking import resolve_wandb_mode

    if run_dir.exists():
        if not run_dir.is_dir():
            raise ConfigError(f"output_dir {run_dir} is a file, not a directory")
        if any(run_dir.iterdir()) and cfg.resume is None:
            raise ConfigError(f"output_dir {run_dir} already holds a run; one directory holds "
                              "one run: continue it with resume=auto, choose another "
                              "output_dir (or leave it unset for a new timestamped one), or "
                              "delete it to start over")
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {run_dir}: {parent} is not writable")
    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda"):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < t.devices:
            raise ConfigError(f"trainer.accelerator={t.accelerator} with trainer.devices="
                              f"{t.devices}, but {have} GPU(s) are visible; use "
                              "trainer.accelerator=cpu (or auto)")
    resolve_wandb_mode(cfg.logger.wandb.mode)


def resume_point(cfg, run_dir: Path, rank0: bool) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to continue from (None: start at step 0).
    Rank 0 checks that the resume continues the same run; the other ranks, which may start
    while rank 0 writes, take the same latest checkpoint (nothing trains before they join)."""
    from fair_lightning.lightning.resume import ResumeError, latest_checkpoint, plan, run_dir_of

    if cfg.resume is None:
        return run_dir, None
    try:
        if rank0:
            run_dir, ckpt = plan(cfg, run_dir)
        elif cfg.resume == "auto":
            ckpt = latest_checkpoint(run_dir)
        else:
            ckpt = Path(cfg.resume)
            run_dir = run_dir_of(ckpt)
    except ResumeError as e:
        raise ConfigError(str(e)) from None
    if rank0:
        log.info("resume=%s: %s", cfg.resume, f"continuing {run_dir} from {ckpt}" if ckpt
                 else f"no checkpoint in {run_dir} yet: starting the run")
    return run_dir, ckpt


def start_record(run_dir: Path, ckpt: Path | None) -> str:
    """Record this start in run.json. Returns the W&B run id."""
    import torch

    from fair_lightning.lightning.resume import RESUME_KEY, RunPosition, record_start

    if ckpt is not None:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        if RESUME_KEY not in saved:
            log.warning("%s was written before exact resume existed: weights, optimizers and "
                        "counters are restored, RNG states, banks and queues are not", ckpt)
        if RunPosition.__qualname__ not in saved.get("callbacks", {}):
            log.warning("%s was written before the CSV log's position was kept: "
                        "csv/metrics.csv may repeat the rows logged after it", ckpt)
    return record_start(run_dir, ckpt)["wandb_id"]


def rank_lengths(split_dir: Path, world: int, batch_size: int, num_workers: int,
                 train: bool) -> list[int]:
    """Clips each of `world` DDP ranks would get from a split, by litdata's own assignment
    (it hands ranks whole chunks, grouped by batch)."""
    from litdata import StreamingDataset
    from litdata.utilities.env import _DistributedEnv

    out = []
    for rank in range(world):
        ds = StreamingDataset(str(split_dir), shuffle=train, drop_last=None if train else False)
        ds.distributed_env = _DistributedEnv(world, rank, 1)
        out.append(ds.get_len(num_workers, batch_size))
    return out


def check_data(cfg, dm) -> None:
    """Split sizes against the process count and batch size: a DDP rank that litdata gives
    no batch has an empty loader, and the run would stop after set-up (with its other
    processes left running)."""
    from data_modules.schema import SPLITS

    world = cfg.trainer.devices * cfg.trainer.num_nodes
    if world == 1:
        return
    bs, workers = cfg.data.batch_size, cfg.data.num_workers
    for split in SPLITS:
        lengths = rank_lengths(dm.split_dir(split), world, bs, workers, split == "train")
        if min(lengths) > 0:
            continue
        ok = next((b for b in range(bs - 1, 0, -1)
                   if min(rank_lengths(dm.split_dir(split), world, b, workers,
                                       split == "train")) > 0), None)
        fix = (f"data.batch_size <= {ok}" if ok else "fewer trainer.devices")
        raise ConfigError(
            f"the {split} split ({sum(lengths)} clips) gives {lengths.count(0)} of the {world} "
            f"processes no batch at data.batch_size={bs} (litdata hands each process whole "
            f"chunks of 8 clips); use {fix}, or more data")


def selection_metrics(cfg, val: dict, summary: dict) -> dict[str, float]:
    """`select/score`: what sweeps and `make compare` select on, from validation data only
    (the last val epoch and the end-of-fit audit on val), never from test.

    score = task - leak_penalty * leak, where leak (`select/val_leak_excess`, in [0, 1]) is
    the mean over gender and ethnicity at clip and person level of the val leakage's excess
    over chance as a share of its room (`report.leak_excess`), on h at full width (the
    erased h after an erasure stage). Graded: runs that all leak fully at person level still
    rank by the rest. NaN when the audit is off."""
    import math

    from fair_lightning.audit.report import leak_excess

    task = val.get(cfg.selection.task_metric, math.nan)
    # after the erasure stage the head scoring val is the refitted one
    task = summary.get(f"erase/{cfg.selection.task_metric.replace('/', '_')}_after", task)
    leak = leak_excess(summary, "fit_leak")
    return {"select/val_task": task, "select/val_leak_excess": leak,
            "select/score": task - cfg.selection.leak_penalty * leak}


def setup_summary(cfg) -> dict[str, str | int]:
    """`setup/...`: what the run's `auto` settings resolved to, in words (the face proxy, the
    detector, the erasure stage), so a summary says which real-data defaults produced it;
    the CPU threads torch used (`setup/threads`), which moves single seeds, and the code
    (`setup/code`)."""
    import torch

    proxy = {"pretrained": "dlib face descriptor", "identity": "identity-pretrained encoder",
             "frozen": "face encoder checkpoint", "cnn": "face CNN trained with D"}
    e = cfg.erasure
    face = proxy.get(cfg.model.face_encoder, cfg.model.face_encoder)
    if k := cfg.model.get("face_proxy_components", 0):
        s = "s" if k > 1 else ""
        partners = " and ".join(cfg.model.get("face_proxy_partners", ["voice"]))
        face += {"leading": f", its {k} leading direction{s} across people",
                 "cross_modal": f", its {k} canonical direction{s} shared with the {partners}",
                 "both": f", its {k} leading direction{s} and {k} shared with the {partners}",
                 }[cfg.model.get("face_proxy", "leading")]
    return {
        "setup/face_proxy": face if cfg.adversary.method == "indirect" else "none",
        "setup/detector": (cfg.data.preprocess.detector if cfg.data.source != "synthetic"
                           else "none (rendered faces)"),
        "setup/speaker_norm": cfg.data.speaker_norm,
        "setup/erasure": (f"proxy {e.proxy}, LEACE rank {e.rank}, residual "
                          f"{'on' if e.residual else 'off'}, fit on {e.fit_on}, head_dims "
                          f"{e.head_dims}" if e.enabled else "off"),
        "setup/threads": torch.get_num_threads(),
        "setup/code": code_version(),
    }


def code_version() -> str:
    """The code a run used: the checkout's commit (with `+changes` when its tracked files
    differ from it), else the installed package's version."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[1]
    try:
        git = ["git", "-C", str(root)]
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        if Path(top).resolve() != root:  # an installed copy inside some other checkout
            raise OSError(top)
        commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
        return f"git {commit}" + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"fair_lightning {version('fair_lightning')}"
    except PackageNotFoundError:
        return "unknown"


def proxy_components_summary(module) -> dict[str, float]:
    """`proxy/components_variance_share`: the between-person variance of the face embedding
    that its kept leading directions hold; `proxy/canonical_correlation_<i>` for directions
    shared with the partner channels (read from the fitted buffers, so a resumed run reports
    them too)."""
    comp = getattr(module.adversary, "components", None)
    if comp is None or not comp.fitted:
        return {}
    return {k: round(v, 4) for k, v in comp.summary().items()}


def data_summary(dm) -> dict[str, int]:
    """`data/...` keys from the shards' meta.json: clips and people per split, people
    shared across splits (ChaLearn's official splits), clips skipped at preprocessing."""
    import json

    meta = json.loads((dm.split_dir("train").parent / "meta.json").read_text())
    out = {f"data/clips/{s}": n for s, n in meta["clips"].items()}
    out.update({f"data/people/{s}": n for s, n in meta["identities"].items()})
    out["data/shared_people"] = int(meta.get("shared_identities", 0))
    out["data/skipped_clips"] = int(sum(meta.get("skipped", {}).values()))
    return out


def run(cfg) -> Path:
    import lightning as L

    from fair_lightning.lightning.erasure_stage import ErasureStage
    from fair_lightning.lightning.probe import SensitiveAttributeProbe
    from fair_lightning.lightning.resume import RunPosition, read_record
    from fair_lightning.lightning.summary import collect_summary, finish
    from fair_lightning.lightning.tracking import make_loggers
    from fair_lightning.ops.runtime import ensure_data, global_rank, resolve_run_dir

    run_dir = resolve_run_dir(cfg.output_dir, cfg.experiment)
    rank0 = global_rank() == 0
    run_dir, ckpt = resume_point(cfg, run_dir, rank0)
    if rank0:
        preflight(cfg, run_dir)
    t0 = time.time()
    dm = build_datamodule(cfg)
    ensure_data(dm)
    dm.setup("fit")
    check_data(cfg, dm)
    data_s = time.time() - t0
    wandb_id = None
    if rank0:  # only once everything that can be checked has passed
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.yaml").is_file():  # a resumed run keeps its own
            save_config(cfg, run_dir / "config.yaml")
        wandb_id = start_record(run_dir, ckpt)
    # after the data: generating it (first run) draws from the global RNGs, reading it
    # does not, and both runs must train alike
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, dm.feature_dims())
    pretrain_stats = prepare_face_encoder(cfg, dm, module)
    from fair_lightning.lightning.checkpoint import ConfigInCheckpoint
    from fair_lightning.lightning.predictions import TestPredictions

    callbacks = analysis_callbacks(cfg, dm) + [TestPredictions(run_dir / "predictions.csv"),
                                               ConfigInCheckpoint(cfg)]
    if getattr(module.adversary, "components", None) is not None:
        from fair_lightning.lightning.proxy_fit import ProxyComponentsFit

        callbacks.insert(0, ProxyComponentsFit(dm))
    if module.erased_head is not None:  # before the probes: the end-of-fit audit sees it
        callbacks.insert(0, ErasureStage(dm, run_dir / "checkpoints" / "last.ckpt"))
    trainer = build_trainer(cfg, run_dir, module, callbacks,
                            make_loggers(cfg, run_dir, dm.cache_name, wandb_id))
    t1 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None,
                weights_only=True)
    fit_s = time.time() - t1
    for cb in callbacks:  # a run resumed after its last epoch skips fit, and its audit
        if isinstance(cb, ErasureStage):
            cb.ensure_fitted(trainer, module)
        if isinstance(cb, SensitiveAttributeProbe):
            cb.ensure_fit_audit(trainer, module)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    position = next(cb for cb in trainer.callbacks if isinstance(cb, RunPosition))
    val = val or position.val_metrics  # resumed after the last epoch: no val ran
    batches = module.trained_batches  # before testing loads a checkpoint's count
    ckpt = str(run_dir / "checkpoints" / f"{cfg.trainer.test_checkpoint}.ckpt")
    # test draws (D's pairs) from a fixed RNG state, not from wherever training left it, so
    # a resumed run tests as the uninterrupted one does
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    test_metrics = trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False,
                                weights_only=True)
    if trainer.is_global_zero:
        summary = collect_summary(trainer, test_metrics, callbacks, {
            "time/data_s": round(data_s, 2), "time/fit_s": round(fit_s, 2),
            "time/total_s": round(time.time() - t0, 2),
            "train/epochs": trainer.current_epoch, "train/batches": batches,
            "train/optimizer_steps": trainer.global_step,
            "train/resumes": len(read_record(run_dir).get("starts", [1])) - 1,
            **pretrain_stats, **proxy_components_summary(module)},
            data_summary(dm), setup_summary(cfg))
        summary.update(selection_metrics(cfg, val, summary))
        summary.update(record_decision(cfg, callbacks, Path(ckpt), f"the test split of {run_dir}"))
        finish(run_dir, cfg, summary, trainer, callbacks)
    return run_dir


def record_decision(cfg, callbacks, ckpt: Path, tested: str) -> dict[str, float]:
    """Write the invite rule the test used into the tested checkpoint, so that scoring new
    clips with it (`fair-predict`) applies the same cut-off; `fair/invite_cutoff`."""
    from fair_lightning.lightning.checkpoint import decision_of, write_decision
    from fair_lightning.lightning.fairness import OutputFairnessCallback

    fairness = next((cb for cb in callbacks if isinstance(cb, OutputFairnessCallback)), None)
    decision = decision_of(cfg, fairness.test_cutoff if fairness else None, tested)
    if decision is None:
        return {}
    write_decision(ckpt, decision)
    return {"fair/invite_cutoff": decision["cutoff"]}


def load_checkpoint(ckpt: Path):
    """The module, rebuilt from the checkpoint's own hyperparameters; a file that is not
    one of our checkpoints is a ConfigError naming it."""
    from fair_lightning.lightning.module import FairScorerModule

    try:
        return FairScorerModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    except Exception as e:  # torch, pickle and key errors alike: the file is not usable
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{ckpt}: not a fair_lightning checkpoint ({type(e).__name__}: "
                          f"{first})") from None


def check_config_matches(module, cfg, ckpt: Path) -> None:
    """The report describes the config; refuse one that disagrees with the model it audits."""
    from omegaconf import OmegaConf

    differ = []
    for group in ("model", "adversary", "optim"):
        saved = module.hparams.get(group) or {}
        for key, value in saved.items():
            now = OmegaConf.select(cfg, f"{group}.{key}")
            now = OmegaConf.to_container(now) if OmegaConf.is_config(now) else now
            if now is not None and now != value:
                differ.append(f"{group}.{key}={value!r} (config: {now!r})")
    if differ:
        raise ConfigError(f"{ckpt} was trained with {', '.join(differ)}; audit it with the "
                          "run's own config or override those keys to match")


def with_erasure(module, cfg):
    """The checkpoint's model with `cfg.erasure` in place of its own (unfitted): the same
    trained weights, another erasure stage to fit. The module itself when they agree."""
    from omegaconf import OmegaConf

    from fair_lightning.lightning.module import FairScorerModule

    wanted = OmegaConf.to_container(cfg.erasure, resolve=True)
    if module.hparams.get("erasure") == wanted:
        return module, False
    hp = dict(module.hparams)
    hp["erasure"] = wanted
    fresh = FairScorerModule(**hp)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("erased_head.")}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("erased_head.") for k in missing):
        raise ConfigError(f"cannot carry the trained weights over: missing {missing}, "
                          f"unexpected {unexpected}")
    return fresh, fresh.erased_head is not None


def home_of(ckpt: Path) -> Path:
    """Where a command writes what it makes of a checkpoint: its run directory when it lies
    in one's checkpoints/, else the checkpoint's own folder (a copy, an audit's file)."""
    from fair_lightning.lightning.resume import ResumeError, run_dir_of

    try:
        return run_dir_of(ckpt)
    except ResumeError:
        return Path(ckpt).resolve().parent


def audit(ckpt: Path, overrides: list[tuple[str, str]]) -> Path:
    import lightning as L

    from data_modules.files import atomic_write
    from fair_lightning.lightning.checkpoint import CONFIG_KEY, checkpoint_config, read_checkpoint
    from fair_lightning.lightning.summary import collect_summary, finish
    from fair_lightning.lightning.tracking import make_loggers

    saved = read_checkpoint(ckpt)
    cfg, cfg_from = checkpoint_config(ckpt, overrides, saved)
    log.info("config of %s: %s", ckpt, cfg_from)
    out = Path(cfg.output_dir) if any(k == "output_dir" for k, _ in overrides) else (
        home_of(ckpt) / f"audit-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out = out.resolve()
    module = load_checkpoint(ckpt)
    check_config_matches(module, cfg, ckpt)
    module, refit = with_erasure(module, cfg)
    out.mkdir(parents=True, exist_ok=True)  # only once the checkpoint and config agree
    save_config(cfg, out / "config.yaml")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    erase = {}
    if refit:
        import torch
        from omegaconf import OmegaConf

        from fair_lightning.lightning.erasure_stage import ErasureStage

        erase = ErasureStage(dm, out / "erased.ckpt").fit_head(module)
        saved = dict(saved)  # the checkpoint read above: loops, optimizers as they were
        saved["state_dict"] = module.state_dict()
        saved["hyper_parameters"] = dict(module.hparams)
        saved[CONFIG_KEY] = OmegaConf.to_container(cfg, resolve=True)  # its own erasure keys
        atomic_write(out / "erased.ckpt", lambda p: torch.save(saved, p))
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # after the data, as in train
    callbacks = analysis_callbacks(cfg, dm)
    trainer = build_audit_trainer(cfg, out, callbacks,
                                  make_loggers(cfg, out, dm.cache_name, job_type="audit"))
    results = trainer.test(module, datamodule=dm, verbose=False)
    summary = collect_summary(trainer, results, callbacks, erase,
                              proxy_components_summary(module), data_summary(dm),
                              setup_summary(cfg), {"audit/checkpoint": str(ckpt.resolve())})
    if refit:  # the refitted model's own invite rule; an audited file is left as it is
        summary.update(record_decision(cfg, callbacks, out / "erased.ckpt",
                                       f"the test split of the audit {out}"))
    finish(out, cfg, summary, trainer, callbacks)
    return out
