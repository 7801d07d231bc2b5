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

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"  # package data: ships in the wheel


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key or file."""


# --------------------------------------------------------------------------- rules
# Each key's rule sits on its field: `one_of` a closed vocabulary, `each_of` the same for
# every item of a list, `check` a (test, what it must be) pair. A vocabulary that a registry
# defines (adversaries, objectives, losses, sources, representations, attacker families) is
# read from that registry when a config is validated, so adding an entry there is enough.
# Defaults live in base.yaml, with a comment each; the schema fixes structure, types, rules.


def rule(default: Any = MISSING, *, one_of=None, each_of=None, check=None):
    meta = {k: v for k, v in (("one_of", one_of), ("each_of", each_of), ("check", check))
            if v is not None}
    return field(default=default, metadata=meta)


def registry(module: str, name: str):
    """The names of a registry, read when needed (validating imports it, loading does not)."""
    def names() -> tuple:
        import importlib

        return tuple(getattr(importlib.import_module(module), name))
    return names


def synthetic_range(key: str):
    """The synthetic source's own range for one of its parameters (one table for both)."""
    def check() -> tuple:
        from data_modules.sources.synthetic import RANGES

        return RANGES[key]
    return check


def at_least(n, why: str = "") -> tuple:
    return (lambda v: v >= n), f">= {n}" + (f" ({why})" if why else "")


def above(n, why: str = "") -> tuple:
    return (lambda v: v > n), f"> {n}" + (f" ({why})" if why else "")


# the spawn launchers re-import the run in fresh processes: the run directory, the face
# encoder's rank-0 pretraining and the requeue handler are set up for ddp's launcher only
NOT_SPAWN = (lambda v: "spawn" not in str(v),
             "auto, ddp or another Lightning strategy; not ddp_spawn (use ddp: the same "
             "processes, started the way this framework is set up and tested for)")

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FRACTIONS = (lambda v: len(v) == 3 and min(v) > 0 and abs(sum(v) - 1.0) <= 1e-6,
                   "three positive numbers summing to 1")


# --------------------------------------------------------------------------- schema
@dataclass
class LeakageConfig:
    video_gender: float = MISSING
    video_ethnicity: float = MISSING
    audio_gender: float = MISSING
    audio_ethnicity: float = MISSING
    text_gender: float = rule(check=synthetic_range("leakage.text_gender"))


@dataclass
class LabelBiasConfig:
    gender: float = MISSING
    ethnicity: float = MISSING


@dataclass
class SyntheticConfig:
    num_identities: int = rule(check=synthetic_range("num_identities"))
    clips_per_identity: int = rule(check=synthetic_range("clips_per_identity"))
    split_fractions: list[float] = rule(check=SPLIT_FRACTIONS)
    seed: int = MISSING
    sentences_per_clip: list[int] = rule(check=synthetic_range("sentences_per_clip"))
    audio_seconds: list[float] = rule(check=synthetic_range("audio_seconds"))
    video_frames: int = rule(check=synthetic_range("video_frames"))
    num_faces: int = rule(check=synthetic_range("num_faces"))
    image_size: int = rule(check=synthetic_range("image_size"))
    merit_in_audio: float = MISSING
    merit_in_text: float = MISSING
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    label_bias: LabelBiasConfig = field(default_factory=LabelBiasConfig)
    label_noise: float = rule(check=synthetic_range("label_noise"))


@dataclass
class PreprocessConfig:
    workers: int = rule(check=at_least(0))
    detector: str = rule(one_of=("auto", "haar", "dlib", "dlib_then_haar"))
    video_frames: int = rule(check=at_least(1))
    num_faces: int = rule(check=at_least(1))
    image_size: int = rule(check=at_least(1))
    face_margin: float = rule(check=at_least(0))
    max_audio_seconds: float = rule(check=above(0))
    max_sentences: int = rule(check=at_least(1))
    face_embedding: str = rule(one_of=("auto", "none", "dlib"))


@dataclass
class ChalearnConfig:
    root: str | None = None
    target: str = rule(one_of=("interview", "extraversion", "neuroticism", "agreeableness",
                                       "conscientiousness", "openness"))
    splits: str = rule(one_of=("identity", "official"))
    split_fractions: list[float] = rule(check=SPLIT_FRACTIONS)
    split_seed: int = MISSING


@dataclass
class ManifestConfig:
    path: str | None = None
    split_fractions: list[float] = rule(check=SPLIT_FRACTIONS)
    split_seed: int = MISSING


@dataclass
class DataConfig:
    source: str = rule(one_of=registry("data_modules.sources", "SOURCES"))
    cache_dir: str = MISSING
    derived_cache_dir: str = MISSING
    text_model: str = MISSING
    batch_size: int = rule(check=at_least(1))
    num_workers: int = rule(check=at_least(0))
    speaker_norm: str = rule("none", one_of=("none", "person"))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    chalearn: ChalearnConfig = field(default_factory=ChalearnConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)


@dataclass
class ModelConfig:
    hidden_dim: int = rule(check=at_least(1))
    fused_dim: int = rule(check=at_least(1))
    dropout: float = rule(check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    audio_encoder: str = rule(one_of=("gru", "conv"))
    video_channels: int = rule(check=at_least(1))
    face_encoder: str = rule(one_of=("auto", "cnn", "frozen", "identity", "pretrained"))
    face_encoder_checkpoint: str | None = None
    face_dim: int = rule(check=at_least(1))
    face_proxy_components: Any = rule(check=at_least(0, "0: the whole face embedding"))  # auto | int >= 0
    face_proxy: str = rule(one_of=registry("fair_lightning.models.proxy", "PROXY_KINDS"))
    face_proxy_partners: list[str] = rule(each_of=registry("fair_lightning.models.proxy",
                                                           "PARTNERS"))
    face_pretrain_epochs: int = rule(check=at_least(1))
    face_pretrain_lr: float = rule(check=above(0))


@dataclass
class AdversaryConfig:
    method: str = rule(one_of=registry("fair_lightning.models.adversaries", "ADVERSARIES"))
    objective: str = rule(one_of=registry("fair_lightning.models.objectives", "OBJECTIVES"))
    weight: float = rule(check=at_least(0))
    weight_schedule: str = rule(one_of=("constant", "dann"))
    warmup_epochs: int = rule(check=at_least(0))
    k_disc: int = rule(check=at_least(1))
    lr: float = rule(check=above(0))
    negatives_per_positive: int = rule(check=at_least(1))
    positive_faces: str = rule(one_of=("own_clip", "other_clip"))
    dependence_queue: int = rule(check=at_least(0))
    dependence_h_kernel: str = rule(one_of=("gaussian", "linear"))
    dependence_measure: str = rule(one_of=("cka", "nocco"))
    nocco_eps: float = rule(check=above(0, "the centred Gram matrix is singular: eps must lift it"))
    dependence_layers: list[str] = rule(
        each_of=registry("fair_lightning.models", "SCORER_REPRESENTATIONS"))
    hidden_dim: int = rule(check=at_least(1))
    heads: int = rule(check=at_least(1))


@dataclass
class ErasureConfig:
    enabled: bool = MISSING
    proxy: str = rule(one_of=("face", "labels"))
    rank: Any = rule(check=at_least(0, "0: no LEACE"))  # auto | int >= 0
    residual: bool = MISSING
    fit_on: str = rule(one_of=("clips", "people"))
    head_dims: int = rule(check=at_least(0, "0: the head reads all of the erased h"))


@dataclass
class OptimConfig:
    lr: float = rule(check=above(0))
    weight_decay: float = rule(check=at_least(0))
    grad_clip: float = rule(check=at_least(0))
    scheduler: str = rule(one_of=("none", "cosine"))
    loss: str = rule(one_of=registry("fair_lightning.models.objectives", "TASK_LOSSES"))


@dataclass
class TrainerConfig:
    max_epochs: int = rule(check=at_least(1, "to test a saved model, use make audit"))
    max_steps: int = MISSING
    accelerator: str = MISSING
    devices: int = rule(check=at_least(1))
    num_nodes: int = rule(check=at_least(1))
    strategy: str = rule(check=NOT_SPAWN)
    precision: str = MISSING
    deterministic: bool = MISSING
    log_every_n_steps: int = rule(check=at_least(1))
    limit_train_batches: float = rule(check=above(0, "a fraction <= 1.0 or a count"))
    limit_val_batches: float = rule(check=above(0, "val/loss chooses the best checkpoint"))
    limit_test_batches: float = rule(check=above(0))
    checkpoint_every_n_batches: int = rule(check=at_least(0))
    test_checkpoint: str = rule(one_of=("last", "best"))
    enable_progress_bar: Any = rule(one_of=(True, False, "auto"))  # true | false | auto


@dataclass
class WandbConfig:
    mode: str = rule(one_of=("auto", "online", "offline", "disabled"))
    project: str = MISSING
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: Any = rule(one_of=(False, True, "all"))  # false | true | all


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = MISSING


@dataclass
class ProbeConfig:
    enabled: bool = MISSING
    every_n_epochs: int = rule(check=at_least(0))
    fit_split: str = rule(one_of=SPLIT_NAMES)
    eval_split: str = rule(one_of=SPLIT_NAMES)
    bootstrap: int = rule(check=at_least(0))
    layers: list[str] = rule(each_of=registry("fair_lightning.models", "REPRESENTATIONS"))
    attackers: list[str] = rule(each_of=registry("fair_lightning.audit.attackers", "FAMILIES"))
    person_level: bool = MISSING
    cv_folds: int = rule(check=at_least(2))
    max_clips: int = rule(check=at_least(0))
    min_people: int = rule(check=at_least(0))
    workers: int = rule(check=at_least(0))
    device: str = rule(one_of=("auto", "cpu"))


@dataclass
class FairnessConfig:
    enabled: bool = MISSING
    threshold: float | None = rule(None, check=(lambda v: v is None or 0 <= v <= 1, "in [0, 1]"))
    top_q: float | None = rule(None, check=(lambda v: v is None or 0 < v < 1, "in (0, 1)"))
    min_group_size: int = rule(check=at_least(1))


@dataclass
class SelectionConfig:
    task_metric: str = rule(one_of=("val/pearson", "val/r2"))
    leak_penalty: float = rule(check=at_least(0))


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


# keys and values renamed to say what they compute; the old ones are still read (saved
# configs, experiment files, overrides, sweeps) and saved under the new names
RENAMED_KEYS = {"adversary.hsic_h_kernel": "adversary.dependence_h_kernel"}
RENAMED_VALUES = {"adversary.objective": {"hsic": "dependence"}}


def renamed_group(group: str, values: dict, source: str = "config") -> dict:
    """A config group as a plain dict (a file's group, a checkpoint's hyperparameters) with
    its renamed keys and values under their new names; both names set is an error."""
    out = dict(values)
    for old, new in RENAMED_KEYS.items():
        g, leaf = old.rsplit(".", 1)
        if g != group or leaf not in out:
            continue
        if new.rsplit(".", 1)[1] in out:
            raise ConfigError(f"{source}: '{old}' is the old name of '{new}': set one of them")
        out[new.rsplit(".", 1)[1]] = out.pop(leaf)
    for key, aliases in RENAMED_VALUES.items():
        g, leaf = key.rsplit(".", 1)
        if g == group and isinstance(out.get(leaf), str):
            out[leaf] = aliases.get(out[leaf], out[leaf])
    return out


def _renamed(cfg: DictConfig, source: str) -> DictConfig:
    for group in {k.split(".")[0] for k in (*RENAMED_KEYS, *RENAMED_VALUES)}:
        if isinstance(cfg.get(group), DictConfig):
            cfg[group] = renamed_group(group, OmegaConf.to_container(cfg[group]), source)
    return cfg


def _yaml_file(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors carry line numbers
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at top level")
    return _renamed(cfg, str(path))


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


def load_config_dict(saved: dict, source: str,
                     overrides: list[tuple[str, str]] | None = None) -> DictConfig:
    """A resolved config kept as a plain dict (inside a checkpoint) + overrides, validated
    again as `load_config_file` does; `source` names it in errors."""
    schema = OmegaConf.structured(ExperimentConfig)
    base = _merge(schema, _yaml_file(EXPERIMENTS_DIR / "base.yaml"), "base.yaml")
    return _finish(_merge(base, _renamed(OmegaConf.create(saved), source), source), schema,
                   overrides)


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
    it is erased (rank 0). A cross-modal proxy (`model.face_proxy` other than `leading`)
    keeps `REAL_PROXY_COMPONENTS` canonical directions on any source."""
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
            REAL_PROXY_COMPONENTS if cfg.adversary.method == "indirect" and (
                cfg.model.face_encoder == "pretrained" or cfg.model.face_proxy != "leading")
            else 0)
    elif not _is_count(k):
        raise ConfigError(f"key 'model.face_proxy_components' must be auto or a count >= 0, "
                          f"got {k!r}")
    rank = cfg.erasure.rank
    if rank == "auto":  # a reduced proxy is erased whole (linearly); a whole descriptor not at all
        face = cfg.erasure.proxy == "face" and cfg.adversary.method == "indirect"
        from fair_lightning.models.proxy import proxy_width

        width = proxy_width(cfg.model.face_proxy_components, cfg.model.face_proxy)
        cfg.erasure.rank = width if face else 0
    elif not _is_count(rank):
        raise ConfigError(f"key 'erasure.rank' must be auto or a count >= 0, got {rank!r}")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finish(cfg: DictConfig, schema: DictConfig, overrides) -> DictConfig:
    for key, value in overrides or []:
        key = RENAMED_KEYS.get(key, key)
        if isinstance(value, str):
            value = RENAMED_VALUES.get(key, {}).get(value, value)
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
    _check_synthetic_sizes(cfg.data.synthetic)  # before its range: the message says more
    _check_rules(cfg)
    _check_probe_splits(cfg.probe)
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
    if (list(cfg.adversary.dependence_layers) != ["fused"]
            and (cfg.adversary.method == "none" or cfg.adversary.objective != "dependence")):
        raise ConfigError("key 'adversary.dependence_layers' is read by adversary.objective="
                          "dependence only (with an adversary method); got objective="
                          f"{cfg.adversary.objective}, method={cfg.adversary.method}")
    _check_face_models(cfg)
    if cfg.model.face_encoder == "frozen" and not cfg.model.face_encoder_checkpoint:
        raise ConfigError("key 'model.face_encoder_checkpoint' is required when "
                          "model.face_encoder=frozen")


def _rules(cls=None, prefix: str = "") -> dict[str, dict]:
    """{dotted key: its rule} from the schema's field metadata."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls or ExperimentConfig):
        if dataclasses.is_dataclass(f.default_factory):
            out.update(_rules(f.default_factory, f"{prefix}{f.name}."))
        elif f.metadata:
            out[prefix + f.name] = dict(f.metadata)
    return out


def _words(values) -> str:
    """Values as one types them: `true, false or auto`."""
    typed = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return ", ".join(typed[:-1]) + f" or {typed[-1]}" if len(typed) > 1 else typed[0]


def _resolved(x):
    return x() if callable(x) else x


def _check_rules(cfg: DictConfig) -> None:
    for key, r in _rules().items():
        value = OmegaConf.select(cfg, key)
        if "check" in r:
            ok, what = _resolved(r["check"])
            if not ok(value):
                shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
                raise ConfigError(f"key '{key}' must be {what}, got {shown!r}")
        if "one_of" in r and value not in (allowed := _resolved(r["one_of"])):
            raise ConfigError(f"key '{key}' must be {_words(allowed)}, got {value!r}")
        if "each_of" in r:
            _check_subset(cfg, key, _resolved(r["each_of"]))


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
    if cfg.model.face_proxy != "leading":
        from fair_lightning.models.proxy import CCA_PRINCIPAL

        if not 1 <= k <= CCA_PRINCIPAL:
            raise ConfigError(f"model.face_proxy={cfg.model.face_proxy} keeps k canonical "
                              "directions of face and voice: set model.face_proxy_components "
                              f"to a count in 1..{CCA_PRINCIPAL}, got {k}")
        partners = list(cfg.model.face_proxy_partners)
        if not partners or len(set(partners)) < len(partners):
            raise ConfigError("key 'model.face_proxy_partners' must name distinct channels the "
                              f"face shares directions with (voice, text), got {partners}")
        if cfg.data.speaker_norm == "person" and "voice" in partners:
            raise ConfigError(f"model.face_proxy={cfg.model.face_proxy} reads what a voice "
                              "shares with a face across people, which data.speaker_norm="
                              "person removes: use one or the other")
    if not k:
        return
    if cfg.adversary.method != "indirect":
        raise ConfigError("model.face_proxy_components reduces the face adversary's embedding: "
                          "it needs adversary.method=indirect")
    if enc == "cnn":
        raise ConfigError("model.face_proxy_components needs a frozen face encoder "
                          "(model.face_encoder=pretrained, identity or frozen): the cnn trains "
                          "with D and its directions would move")
    from data_modules.features.dlib_faces import DESCRIPTOR_DIM

    dim = DESCRIPTOR_DIM if enc == "pretrained" else cfg.model.face_dim
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
