"""Experiment configuration: `fair_lightning/experiments/base.yaml` + `fair_lightning/experiments/<exp>.yaml` + overrides.

Everything is validated against the structured schema below, so an unknown key or a wrong
type fails early with a message that names the key. Defaults live in `base.yaml` (with a
comment each); the schema only fixes the structure and types.
"""

from __future__ import annotations

import difflib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from data_modules.files import atomic_write
from data_modules.sources import SOURCES

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"  # package data: ships in the wheel


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key or file."""


# --------------------------------------------------------------------------- schema
@dataclass
class LeakageConfig:
    video_gender: float = MISSING
    video_ethnicity: float = MISSING
    audio_gender: float = MISSING
    audio_ethnicity: float = MISSING
    text_gender: float = MISSING


@dataclass
class LabelBiasConfig:
    gender: float = MISSING
    ethnicity: float = MISSING


@dataclass
class SyntheticConfig:
    num_identities: int = MISSING
    clips_per_identity: int = MISSING
    split_fractions: list[float] = MISSING
    seed: int = MISSING
    sentences_per_clip: list[int] = MISSING
    audio_seconds: list[float] = MISSING
    video_frames: int = MISSING
    num_faces: int = MISSING
    image_size: int = MISSING
    merit_in_audio: float = MISSING
    merit_in_text: float = MISSING
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    label_bias: LabelBiasConfig = field(default_factory=LabelBiasConfig)
    label_noise: float = MISSING


@dataclass
class PreprocessConfig:
    workers: int = MISSING
    detector: str = MISSING
    video_frames: int = MISSING
    num_faces: int = MISSING
    image_size: int = MISSING
    face_margin: float = MISSING
    max_audio_seconds: float = MISSING
    max_sentences: int = MISSING
    face_embedding: str = MISSING


@dataclass
class ChalearnConfig:
    root: str | None = None
    target: str = MISSING
    splits: str = MISSING
    split_fractions: list[float] = MISSING
    split_seed: int = MISSING


@dataclass
class ManifestConfig:
    path: str | None = None
    split_fractions: list[float] = MISSING
    split_seed: int = MISSING


@dataclass
class DataConfig:
    source: str = MISSING
    cache_dir: str = MISSING
    derived_cache_dir: str = MISSING
    text_model: str = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    speaker_norm: str = "none"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    chalearn: ChalearnConfig = field(default_factory=ChalearnConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)


@dataclass
class ModelConfig:
    hidden_dim: int = MISSING
    fused_dim: int = MISSING
    dropout: float = MISSING
    audio_encoder: str = MISSING
    video_channels: int = MISSING
    face_encoder: str = MISSING
    face_encoder_checkpoint: str | None = None
    face_dim: int = MISSING
    face_proxy_components: Any = MISSING  # auto | int >= 0
    face_pretrain_epochs: int = MISSING
    face_pretrain_lr: float = MISSING


@dataclass
class AdversaryConfig:
    method: str = MISSING
    objective: str = MISSING
    weight: float = MISSING
    weight_schedule: str = MISSING
    warmup_epochs: int = MISSING
    k_disc: int = MISSING
    lr: float = MISSING
    negatives_per_positive: int = MISSING
    positive_faces: str = MISSING
    dependence_queue: int = MISSING
    hsic_h_kernel: str = MISSING
    dependence_measure: str = MISSING
    nocco_eps: float = MISSING
    hidden_dim: int = MISSING
    heads: int = MISSING


@dataclass
class ErasureConfig:
    enabled: bool = MISSING
    proxy: str = MISSING
    rank: Any = MISSING  # auto | int >= 0
    residual: bool = MISSING
    fit_on: str = MISSING
    head_dims: int = MISSING


@dataclass
class OptimConfig:
    lr: float = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    scheduler: str = MISSING
    loss: str = MISSING


@dataclass
class TrainerConfig:
    max_epochs: int = MISSING
    max_steps: int = MISSING
    accelerator: str = MISSING
    devices: int = MISSING
    num_nodes: int = MISSING
    strategy: str = MISSING
    precision: str = MISSING
    deterministic: bool = MISSING
    log_every_n_steps: int = MISSING
    limit_train_batches: float = MISSING
    limit_val_batches: float = MISSING
    limit_test_batches: float = MISSING
    checkpoint_every_n_batches: int = MISSING
    test_checkpoint: str = MISSING
    enable_progress_bar: Any = MISSING  # true | false | auto


@dataclass
class WandbConfig:
    mode: str = MISSING
    project: str = MISSING
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: Any = MISSING  # false | true | all


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = MISSING


@dataclass
class ProbeConfig:
    enabled: bool = MISSING
    every_n_epochs: int = MISSING
    fit_split: str = MISSING
    eval_split: str = MISSING
    bootstrap: int = MISSING
    layers: list[str] = MISSING
    attackers: list[str] = MISSING
    person_level: bool = MISSING
    cv_folds: int = MISSING
    max_clips: int = MISSING
    min_people: int = MISSING


@dataclass
class FairnessConfig:
    enabled: bool = MISSING
    threshold: float | None = None
    top_q: float | None = None
    min_group_size: int = MISSING


@dataclass
class SelectionConfig:
    task_metric: str = MISSING
    leak_penalty: float = MISSING


@dataclass
class ExperimentConfig:
    experiment: str = MISSING
    description: str = ""
    seed: int = MISSING
    output_dir: str | None = None
    resume: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    erasure: ErasureConfig = field(default_factory=ErasureConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)


# Closed vocabularies, checked after the type check.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": tuple(SOURCES),
    "data.speaker_norm": ("none", "person"),
    "data.preprocess.detector": ("auto", "haar", "dlib", "dlib_then_haar"),
    "data.preprocess.face_embedding": ("auto", "none", "dlib"),
    "data.chalearn.target": ("interview", "extraversion", "neuroticism", "agreeableness",
                             "conscientiousness", "openness"),
    "data.chalearn.splits": ("identity", "official"),
    "model.audio_encoder": ("gru", "conv"),
    "model.face_encoder": ("auto", "cnn", "frozen", "identity", "pretrained"),
    "adversary.method": ("none", "indirect", "label"),
    "adversary.objective": ("confusion", "minimax", "grl", "hsic"),
    "adversary.positive_faces": ("own_clip", "other_clip"),
    "adversary.hsic_h_kernel": ("gaussian", "linear"),
    "adversary.dependence_measure": ("cka", "nocco"),
    "adversary.weight_schedule": ("constant", "dann"),
    "erasure.proxy": ("face", "labels"),
    "erasure.fit_on": ("clips", "people"),
    "optim.scheduler": ("none", "cosine"),
    "optim.loss": ("mse", "mae", "huber"),
    "trainer.test_checkpoint": ("last", "best"),
    "probe.fit_split": ("train", "val", "test"),
    "probe.eval_split": ("train", "val", "test"),
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
    "selection.task_metric": ("val/pearson", "val/r2"),
}


# Lists whose items come from a closed vocabulary (the model's representations, the attacker
# families); kept here so loading a config imports no model code, a test checks they agree.
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "probe.layers": ("text", "audio", "video", "fused", "erased", "head", "score", "proxy"),
    "probe.attackers": ("linear", "kernel", "mlp", "svm"),
}


# --------------------------------------------------------------------------- loading
def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if p.stem != "base")


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node._get_node(k), full + "."))
    return keys


def _closest(key: str, schema: DictConfig) -> str:
    valid = _all_keys(schema)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return match[0] if match else "?"


def _type_name(schema: DictConfig, key: str) -> str:
    node = schema
    for part in key.split("."):
        node = node._get_node(part)
    ref = getattr(node, "_metadata", None)
    t = getattr(ref, "ref_type", None)
    return getattr(t, "__name__", str(t)).replace("typing.", "")


def _merge(schema: DictConfig, other: DictConfig | dict, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, other)
    except ConfigKeyError as e:
        key = e.full_key or str(e.key)
        raise ConfigError(
            f"{source}: unknown key '{key}' (closest valid key: '{_closest(key, schema)}')"
        ) from None
    except ValidationError as e:
        key = e.full_key
        raise ConfigError(
            f"{source}: key '{key}' expects type {_type_name(schema, key)}, "
            f"got {e.value!r}" if key else f"{source}: {e.msg}"
        ) from None


def parse_overrides(args: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Split `key=value` / `--key=value` arguments; returns (experiment, [(key, value)])."""
    experiment = None
    pairs = []
    for raw in args:
        arg = raw[2:] if raw.startswith("--") else raw
        if "=" not in arg:
            raise ConfigError(
                f"malformed override '{raw}': expected key=value (e.g. trainer.max_epochs=3)"
            )
        key, value = arg.split("=", 1)
        if not key:
            raise ConfigError(f"malformed override '{raw}': empty key")
        if key == "experiment":
            experiment = value
        else:
            pairs.append((key, value))
    return experiment, pairs


def _yaml_file(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors carry line numbers
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at top level")
    return cfg


def load_config(
    experiment: str, overrides: list[tuple[str, str]] | None = None
) -> DictConfig:
    """Merge base + experiment + overrides and validate. Returns a read-only config.

    `experiment`: a name of the packaged experiments, or the path of a YAML file of your own
    (`*.yaml`), which overrides base.yaml as a packaged one does; its stem names the run."""
    path = experiment_file(experiment)
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = _merge(schema, _yaml_file(EXPERIMENTS_DIR / "base.yaml"), "base.yaml")
    cfg = _merge(cfg, _yaml_file(path), str(path))
    cfg.experiment = path.stem
    return _finish(cfg, schema, overrides)


def experiment_file(experiment: str) -> Path:
    if experiment.endswith((".yaml", ".yml")):
        path = Path(experiment).expanduser()
        if not path.is_file():
            raise ConfigError(f"experiment file not found: {path}")
        return path
    names = available_experiments()
    if experiment not in names:
        raise ConfigError(f"unknown experiment '{experiment}'; available: {', '.join(names)}, "
                          "or the path of a .yaml file")
    return EXPERIMENTS_DIR / f"{experiment}.yaml"


def load_config_file(path: Path, overrides: list[tuple[str, str]] | None = None) -> DictConfig:
    """A saved, resolved config (a run dir's config.yaml) + overrides, validated again."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    schema = OmegaConf.structured(ExperimentConfig)
    # keys added since the run was made take today's defaults
    base = _merge(schema, _yaml_file(EXPERIMENTS_DIR / "base.yaml"), "base.yaml")
    return _finish(_merge(base, _yaml_file(path), str(path)), schema, overrides)


REAL_SOURCES = ("chalearn", "manifest")
REAL_PROXY_COMPONENTS = 2  # chosen on the real-face benchmark's validation split (docs/results.md)


def resolve_auto(cfg: DictConfig) -> None:
    """`auto` values -> what measures best on the source (docs/results.md, "The real-face development
    benchmark").

    Real video (chalearn, manifest): dlib's detector with Haar's cascade for the frames it
    misses (counted), and dlib's face descriptor, stored at preprocessing, as the face proxy:
    on real photographs the identity-pretrained encoder matches a person's clips by the
    setting they share and carries little gender, the descriptor carries it; the adversary
    reads its `REAL_PROXY_COMPONENTS` leading directions across people, not the whole
    descriptor, which would take who a person is (and their merit) out of h, and the
    erasure stage erases those directions from h (LEACE at their full rank). Synthetic: the
    renders are too small for dlib, the identity encoder is the proxy, whole, and nothing of
    it is erased (rank 0)."""
    real = cfg.data.source in REAL_SOURCES
    pre = cfg.data.preprocess
    if pre.detector == "auto":
        pre.detector = "dlib_then_haar" if real else "haar"
    if pre.face_embedding == "auto":
        pre.face_embedding = "dlib" if real else "none"
    if cfg.model.face_encoder == "auto":
        cfg.model.face_encoder = ("pretrained" if real and pre.face_embedding == "dlib"
                                  else "identity")
    k = cfg.model.face_proxy_components
    if k == "auto":
        cfg.model.face_proxy_components = (
            REAL_PROXY_COMPONENTS if cfg.model.face_encoder == "pretrained"
            and cfg.adversary.method == "indirect" else 0)
    elif not _is_count(k):
        raise ConfigError(f"key 'model.face_proxy_components' must be auto or a count >= 0, "
                          f"got {k!r}")
    rank = cfg.erasure.rank
    if rank == "auto":  # a reduced proxy is erased whole (linearly); a whole descriptor not at all
        face = cfg.erasure.proxy == "face" and cfg.adversary.method == "indirect"
        cfg.erasure.rank = cfg.model.face_proxy_components if face else 0
    elif not _is_count(rank):
        raise ConfigError(f"key 'erasure.rank' must be auto or a count >= 0, got {rank!r}")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finish(cfg: DictConfig, schema: DictConfig, overrides) -> DictConfig:
    for key, value in overrides or []:
        if key not in _all_keys(schema):
            raise ConfigError(
                f"override: unknown key '{key}' (closest valid key: '{_closest(key, schema)}')"
            )
        if _is_group(schema, key):
            raise ConfigError(f"override '{key}={value}': '{key}' is a group of keys; set one "
                              f"of them, e.g. '{_first_leaf(schema, key)}=...'")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        except Exception as e:  # the grammar's errors: unbalanced brackets, bad quoting
            msg = str(e).splitlines()[0]
            raise ConfigError(f"override '{key}={value}' cannot be parsed: {msg}") from None
        cfg = _merge(cfg, parsed, f"override '{key}={value}'")
    resolve_auto(cfg)  # the saved config names what ran, never `auto`
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _is_group(schema: DictConfig, key: str) -> bool:
    return isinstance(OmegaConf.select(schema, key), DictConfig)


def _first_leaf(schema: DictConfig, key: str) -> str:
    node = OmegaConf.select(schema, key)
    while isinstance(node, DictConfig):
        first = next(iter(node.keys()))
        key, node = f"{key}.{first}", node._get_node(first)
    return key


def _positive(v) -> bool:
    return v > 0


def _at_least(n):
    return lambda v: v >= n


# key -> (check, what it must be); ranges that types cannot say. Each bound has a reason:
# a batch needs a clip, a split needs people, a fraction of batches must be a fraction
RANGES: dict[str, tuple] = {
    "data.batch_size": (_at_least(1), ">= 1"),
    "data.num_workers": (_at_least(0), ">= 0"),
    "data.synthetic.clips_per_identity": (_at_least(1), ">= 1"),
    "data.synthetic.video_frames": (_at_least(1), ">= 1"),
    "data.synthetic.num_faces": (_at_least(1), ">= 1"),
    "data.synthetic.image_size": (_at_least(8), ">= 8 (the face renderer's smallest size)"),
    "data.synthetic.label_noise": (_at_least(0), ">= 0"),
    "model.hidden_dim": (_at_least(1), ">= 1"),
    "model.fused_dim": (_at_least(1), ">= 1"),
    "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.video_channels": (_at_least(1), ">= 1"),
    "model.face_dim": (_at_least(1), ">= 1"),
    "model.face_proxy_components": (_at_least(0), ">= 0 (0: the whole face embedding)"),
    "model.face_pretrain_epochs": (_at_least(1), ">= 1"),
    "model.face_pretrain_lr": (_positive, "> 0"),
    "adversary.weight": (_at_least(0), ">= 0"),
    "adversary.warmup_epochs": (_at_least(0), ">= 0"),
    "adversary.lr": (_positive, "> 0"),
    "adversary.negatives_per_positive": (_at_least(1), ">= 1"),
    "adversary.dependence_queue": (_at_least(0), ">= 0"),
    "adversary.hidden_dim": (_at_least(1), ">= 1"),
    "adversary.heads": (_at_least(1), ">= 1"),
    "erasure.rank": (_at_least(0), ">= 0 (0: no LEACE)"),
    "erasure.head_dims": (_at_least(0), ">= 0 (0: the head reads all of the erased h)"),
    "optim.lr": (_positive, "> 0"),
    "optim.weight_decay": (_at_least(0), ">= 0"),
    "optim.grad_clip": (_at_least(0), ">= 0"),
    "trainer.max_epochs": (_at_least(1), ">= 1 (to test a saved model, use make audit)"),
    "trainer.devices": (_at_least(1), ">= 1"),
    "trainer.num_nodes": (_at_least(1), ">= 1"),
    "trainer.log_every_n_steps": (_at_least(1), ">= 1"),
    "trainer.limit_train_batches": (_positive, "> 0 (a fraction <= 1.0 or a count)"),
    "trainer.limit_val_batches": (_positive, "> 0 (val/loss chooses the best checkpoint)"),
    "trainer.limit_test_batches": (_positive, "> 0"),
    "trainer.checkpoint_every_n_batches": (_at_least(0), ">= 0"),
    "probe.bootstrap": (_at_least(0), ">= 0"),
    "probe.every_n_epochs": (_at_least(0), ">= 0"),
    "probe.max_clips": (_at_least(0), ">= 0"),
    "probe.min_people": (_at_least(0), ">= 0"),
    "fairness.min_group_size": (_at_least(1), ">= 1"),
    "selection.leak_penalty": (_at_least(0), ">= 0"),
}


def _non_finite(node, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, DictConfig):
            out += _non_finite(v, key + ".")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(key)
        elif isinstance(v, (list, ListConfig)):
            out += [key for x in v if isinstance(x, float) and not math.isfinite(x)][:1]
    return out


def validate(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing value for key(s): {', '.join(missing)}")
    bad = _non_finite(cfg)
    if bad:
        raise ConfigError(f"key '{bad[0]}' must be a finite number, got "
                          f"{OmegaConf.select(cfg, bad[0])!r}")
    for key, (ok, what) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"key '{key}' must be {what}, got {value!r}")
    if cfg.logger.wandb.log_model not in (True, False, "all"):
        raise ConfigError("key 'logger.wandb.log_model' must be false, true or all, got "
                          f"{cfg.logger.wandb.log_model!r}")
    if cfg.trainer.enable_progress_bar not in (True, False, "auto"):
        raise ConfigError("key 'trainer.enable_progress_bar' must be true, false or auto, got "
                          f"{cfg.trainer.enable_progress_bar!r}")
    t = cfg.fairness
    if t.top_q is not None and not 0 < t.top_q < 1:
        raise ConfigError(f"key 'fairness.top_q' must be in (0, 1), got {t.top_q!r}")
    if t.threshold is not None and not 0 <= t.threshold <= 1:
        raise ConfigError(f"key 'fairness.threshold' must be in [0, 1], got {t.threshold!r}")
    _check_probe_splits(cfg.probe)
    _check_synthetic_sizes(cfg.data.synthetic)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"key '{key}' must be one of {allowed}, got {value!r}")
    for block in ("synthetic", "chalearn", "manifest"):
        fr = cfg.data[block].split_fractions
        if len(fr) != 3 or abs(sum(fr) - 1.0) > 1e-6 or min(fr) <= 0:
            raise ConfigError(f"key 'data.{block}.split_fractions' must be three positive "
                              "numbers summing to 1")
    pre = cfg.data.preprocess
    for key in ("video_frames", "num_faces", "image_size", "max_sentences"):
        if pre[key] < 1:
            raise ConfigError(f"key 'data.preprocess.{key}' must be >= 1")
    if pre.workers < 0 or pre.face_margin < 0 or pre.max_audio_seconds <= 0:
        raise ConfigError("keys 'data.preprocess.workers' and 'face_margin' must be >= 0, "
                          "'max_audio_seconds' > 0")
    for key, allowed in LIST_CHOICES.items():
        _check_subset(cfg, key, allowed)
    if cfg.adversary.nocco_eps <= 0:  # the centred Gram matrix is singular: eps must lift it
        raise ConfigError("key 'adversary.nocco_eps' must be > 0")
    if cfg.probe.cv_folds < 2:
        raise ConfigError("key 'probe.cv_folds' must be >= 2")
    if cfg.adversary.k_disc < 1:
        raise ConfigError("key 'adversary.k_disc' must be >= 1")
    if cfg.fairness.threshold is not None and cfg.fairness.top_q is not None:
        raise ConfigError("set only one of 'fairness.threshold' and 'fairness.top_q'")
    if cfg.model.face_encoder == "pretrained" and (
            cfg.data.source == "synthetic" or cfg.data.preprocess.face_embedding == "none"):
        raise ConfigError("model.face_encoder=pretrained reads face descriptors computed at "
                          "preprocessing: it needs a raw source (chalearn, manifest) and "
                          "data.preprocess.face_embedding=dlib")
    if cfg.model.face_encoder == "pretrained" and cfg.adversary.positive_faces == "other_clip":
        raise ConfigError("model.face_encoder=pretrained works with adversary.positive_faces="
                          "own_clip only (the face bank holds frames, not descriptors)")
    _check_proxy_components(cfg)
    _check_erasure(cfg)
    _check_face_models(cfg)
    if cfg.model.face_encoder == "frozen" and not cfg.model.face_encoder_checkpoint:
        raise ConfigError("key 'model.face_encoder_checkpoint' is required when "
                          "model.face_encoder=frozen")


def _check_face_models(cfg: DictConfig) -> None:
    """A raw source that needs dlib stops here, with the install line, when it is absent
    (located, not imported: validation stays fast)."""
    import importlib.util

    pre = cfg.data.preprocess
    if cfg.data.source not in REAL_SOURCES or (
            pre.detector == "haar" and pre.face_embedding == "none"):
        return
    from data_modules.features.dlib_faces import INSTALL_HINT

    missing = [m for m in ("dlib", "face_recognition_models")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"data.source={cfg.data.source} uses dlib's face detector or descriptor "
            f"(data.preprocess.detector={pre.detector}, face_embedding={pre.face_embedding}), "
            f"but {', '.join(missing)} is not installed: `{INSTALL_HINT}` (or set "
            "data.preprocess.detector=haar data.preprocess.face_embedding=none "
            "model.face_encoder=identity, a weaker proxy on real faces)")


def _check_proxy_components(cfg: DictConfig) -> None:
    k, enc = cfg.model.face_proxy_components, cfg.model.face_encoder
    if not k:
        return
    if cfg.adversary.method != "indirect":
        raise ConfigError("model.face_proxy_components reduces the face adversary's embedding: "
                          "it needs adversary.method=indirect")
    if enc == "cnn":
        raise ConfigError("model.face_proxy_components needs a frozen face encoder "
                          "(model.face_encoder=pretrained, identity or frozen): the cnn trains "
                          "with D and its directions would move")
    dim = 128 if enc == "pretrained" else cfg.model.face_dim  # dlib's descriptor is 128-d
    if k > dim:
        raise ConfigError(f"model.face_proxy_components={k} exceeds the face embedding's "
                          f"{dim} dims")


def _check_erasure(cfg: DictConfig) -> None:
    e = cfg.erasure
    if not e.enabled:
        return
    if e.proxy == "face" and (e.rank > 0 or e.residual) and cfg.adversary.method != "indirect":
        raise ConfigError("erasure.proxy=face erases the adversary's face embedding: it needs "
                          "adversary.method=indirect (or erasure.proxy=labels)")
    if e.proxy == "labels" and e.residual:
        raise ConfigError("erasure.residual subtracts E[h | face] and needs the proxy at "
                          "inference: use it with erasure.proxy=face")
    if e.rank >= cfg.model.fused_dim:  # every direction of h erased: nothing to score
        raise ConfigError(f"erasure.rank={e.rank} would erase all {cfg.model.fused_dim} "
                          "directions of h (model.fused_dim); use a smaller rank")
    if e.head_dims > cfg.model.fused_dim:
        raise ConfigError(f"erasure.head_dims={e.head_dims} exceeds model.fused_dim="
                          f"{cfg.model.fused_dim}")
    if cfg.trainer.test_checkpoint != "last":
        raise ConfigError("erasure is fitted on the final weights: use trainer.test_checkpoint="
                          "last")


def _check_probe_splits(probe: DictConfig) -> None:
    """Attackers must meet people they were not fitted on, in every audit of the run."""
    if probe.fit_split == probe.eval_split:
        raise ConfigError(f"probe.fit_split and probe.eval_split are both {probe.fit_split!r}: "
                          "attackers must be scored on people they were not fitted on")
    if probe.fit_split == "val":
        raise ConfigError("probe.fit_split=val: the end-of-fit audit scores attackers on val, "
                          "so they would meet the people they were fitted on; use train")


def _check_synthetic_sizes(syn: DictConfig) -> None:
    from data_modules.splits import exact_counts

    people = exact_counts(max(syn.num_identities, 0), syn.split_fractions)
    if syn.num_identities < 1 or people.min() < 2:
        raise ConfigError(
            f"key 'data.synthetic.num_identities'={syn.num_identities} gives "
            f"{'/'.join(map(str, people))} people for train/val/test; every split needs at "
            "least 2 (probes and fairness metrics compare people)")


def _check_subset(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> None:
    values = list(OmegaConf.select(cfg, key))
    bad = [v for v in values if v not in allowed]
    if bad or not values or len(set(values)) != len(values):
        raise ConfigError(f"key '{key}' must be a non-empty list of distinct values from "
                          f"{allowed}, got {values}")


# the experiment every entry point runs when none is named (`make train` too)
DEFAULT_EXPERIMENT = "adversarial"


def config_from_argv(argv: list[str] | None = None,
                     default_experiment: str = DEFAULT_EXPERIMENT):
    experiment, pairs = parse_overrides(sys.argv[1:] if argv is None else argv)
    return load_config(experiment or default_experiment, pairs)


def save_config(cfg: DictConfig, path: Path) -> None:
    atomic_write(path, OmegaConf.to_yaml(cfg, resolve=True))


def flat_config(node: dict, prefix: str = "") -> dict[str, Any]:
    """A plain (nested) config as {dotted key: value}."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.update(flat_config(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def differing_keys(configs: list[dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between plain configs (a key that one of them lacks
    differs), sorted; keys in `ignore`, and the keys under them, are left out."""
    flats = [flat_config(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if not any(k == i or k.startswith(i + ".") for i in ignore)
            and any(f.get(k, "<unset>") != flats[0].get(k, "<unset>") for f in flats)]


def config_differences(saved: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: old -> new` for each dotted key in which `new` differs from `saved`."""
    old, now = flat_config(saved), flat_config(new)
    return [f"{k}: {old.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}"
            for k in differing_keys([saved, new], ignore)]
