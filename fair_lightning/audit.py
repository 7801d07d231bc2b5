"""Re-run the leakage audit (probes + output fairness) on a saved checkpoint.

    python -m fair_lightning.audit ckpt=<path.ckpt> [key=value ...]

The run's own config.yaml (two levels above the checkpoint) is the starting point; any
override applies on top, e.g. `data.synthetic.seed=7` to audit on other data, or
`probe.fit_split=val`. `erasure.*` keys that differ from the checkpoint's fit that erasure
stage on the checkpoint's trained weights first (e.g. `erasure.enabled=true
erasure.proxy=labels erasure.rank=5 erasure.head_dims=0` on a baseline run), and the
refitted model is written as `erased.ckpt` in the audit dir. Writes summary.json, report.md and plots/ to `output_dir`
(default: <run dir>/audit-<timestamp>). The last line printed is `audit dir: <path>`.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from fair_lightning.runtime import set_offline_env, start_cli

set_offline_env()

from fair_lightning.config import (  # noqa: E402
    ConfigError,
    load_config_file,
    parse_overrides,
    save_config,
)

HELP = __doc__


def load_checkpoint(ckpt: Path):
    """The module, rebuilt from the checkpoint's own hyperparameters; a file that is not
    one of our checkpoints is a ConfigError naming it."""
    from fair_lightning.module import FairScorerModule

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

    from fair_lightning.module import FairScorerModule

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


def audit(ckpt: Path, overrides: list[tuple[str, str]]) -> Path:
    import lightning as L

    from data_modules.files import atomic_write, json_text
    from fair_lightning.report import write_run_report
    from fair_lightning.tracking import (
        collect_summary,
        finish_wandb,
        make_loggers,
    )
    from fair_lightning.train import analysis_callbacks, build_datamodule

    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    cfg_path = ckpt.resolve().parent.parent / "config.yaml"
    cfg = load_config_file(cfg_path, overrides)
    out = Path(cfg.output_dir) if any(k == "output_dir" for k, _ in overrides) else (
        cfg_path.parent / f"audit-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
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

        from fair_lightning.callbacks import ErasureStage

        erase = ErasureStage(dm, out / "erased.ckpt").fit_head(module)
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        saved["state_dict"] = module.state_dict()
        saved["hyper_parameters"] = dict(module.hparams)
        atomic_write(out / "erased.ckpt", lambda p: torch.save(saved, p))
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # after the data, as in train
    callbacks = analysis_callbacks(cfg, dm)
    trainer = L.Trainer(default_root_dir=str(out), accelerator=cfg.trainer.accelerator,
                        devices=1, logger=make_loggers(cfg, out, dm.cache_name,
                                                       job_type="audit"), callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, deterministic=cfg.trainer.deterministic)
    results = trainer.test(module, datamodule=dm, verbose=False)
    summary = collect_summary(trainer, results, callbacks)
    summary.update(erase)
    summary["audit/checkpoint"] = str(ckpt.resolve())
    atomic_write(out / "summary.json", json_text(summary))
    write_run_report(out, cfg, summary, callbacks)
    finish_wandb(trainer, summary, out)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = start_cli(argv, HELP)
    if argv is None:
        return 0
    from data_modules.errors import CorpusError
    from data_modules.shards import ShardError

    try:
        _, pairs = parse_overrides(argv)
        ckpts = [v for k, v in pairs if k == "ckpt"]
        if not ckpts:
            raise ConfigError("missing ckpt=<path to a .ckpt file>")
        out = audit(Path(ckpts[0]), [(k, v) for k, v in pairs if k != "ckpt"])
    except (ConfigError, ShardError, CorpusError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"audit dir: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
