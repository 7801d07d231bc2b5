"""What a checkpoint carries besides its weights, so that every command reads it wherever
it lies (a run's `best`, `last` or periodic file, an audit's `erased.ckpt`, a copy):

- `CONFIG_KEY`: the run's resolved config (written at every save by `ConfigInCheckpoint`;
  an audit that refits the erasure stage writes its own into `erased.ckpt`);
- `DECISION_KEY`: the invite rule the model was tested with (the score cut-off of its test
  split, or `fairness.threshold`), written after the test into the checkpoint tested.

A checkpoint from before these keys still works where its run directory is intact: the
config is the `config.yaml` of the nearest folder above it, the cut-off is recomputed from
the run's `predictions.csv`.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from fair_lightning.config import ConfigError

CONFIG_KEY = "fair_lightning_config"
DECISION_KEY = "fair_lightning_decision"
CONFIG_SEARCH_DEPTH = 3  # erased.ckpt (audit dir), checkpoints/x.ckpt, checkpoints/periodic/x


class ConfigInCheckpoint(L.Callback):
    """Puts the resolved config into every checkpoint the trainer saves."""

    def __init__(self, cfg):
        from omegaconf import OmegaConf

        # plain containers: the checkpoint still loads with torch's weights_only=True
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config


def read_checkpoint(ckpt: Path) -> dict:
    """The checkpoint's dict (tensors memory-mapped); a missing or unreadable file is a
    ConfigError naming it."""
    import torch

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint not found: {ckpt}")
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, pickle of something else, not a torch file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{ckpt}: not a readable checkpoint ({type(e).__name__}: {first})"
                          ) from None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise ConfigError(f"{ckpt}: not a fair_lightning checkpoint (no state_dict)")
    return saved


def config_file_near(ckpt: Path) -> Path | None:
    """The `config.yaml` of the nearest folder above an older checkpoint (an audit dir holds
    its erased.ckpt beside its config; a run's checkpoints lie one or two folders down)."""
    for folder in list(Path(ckpt).resolve().parents)[:CONFIG_SEARCH_DEPTH]:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def checkpoint_config(ckpt: Path, overrides: list[tuple[str, str]] | None = None,
                      saved: dict | None = None):
    """(the config the checkpoint's model was made with, plus `overrides`; where it was
    read from)."""
    from fair_lightning.config import load_config_dict, load_config_file

    saved = read_checkpoint(ckpt) if saved is None else saved
    if CONFIG_KEY in saved:
        return (load_config_dict(saved[CONFIG_KEY], f"{ckpt} (its config)", overrides),
                str(Path(ckpt).resolve()))
    path = config_file_near(ckpt)
    if path is None:
        raise ConfigError(f"{ckpt} carries no config (it was written before checkpoints "
                          "did) and no config.yaml lies in the folders above it: keep it in "
                          "its run directory")
    return load_config_file(path, overrides), str(path.resolve())


def run_dir_near(ckpt: Path) -> Path | None:
    """The run (or audit) directory a checkpoint lies in, where it still does."""
    path = config_file_near(ckpt)
    return path.parent if path is not None else None


def write_decision(ckpt: Path, decision: dict) -> None:
    """Add the invite rule the model was tested with to the checkpoint (atomically)."""
    import torch

    from data_modules.files import atomic_write

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    saved[DECISION_KEY] = dict(decision)
    atomic_write(Path(ckpt), lambda tmp: torch.save(saved, tmp))


def decision_of(cfg, cutoff: float | None, tested: str) -> dict | None:
    """The invite rule of a test: `fairness.threshold` where set, else the top-q cut-off the
    test split's scores gave; None without a test cut-off."""
    if cfg.fairness.threshold is not None:
        return {"cutoff": float(cfg.fairness.threshold), "rule": "fairness.threshold",
                "from": tested}
    if cutoff is None:
        return None
    return {"cutoff": float(cutoff),
            "rule": f"top {100 * cfg.fairness.top_q:g}% of the test split's scores",
            "from": tested}
