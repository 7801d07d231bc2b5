import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fair_lightning.config import (
    ConfigError,
    available_experiments,
    load_config,
    parse_overrides,
)

ROOT = Path(__file__).resolve().parents[2]


def test_experiment_files_override_base():
    base_keys = OmegaConf.to_container(load_config("baseline"))
    adv = load_config("adversarial")
    assert adv.adversary.method == "indirect"
    assert load_config("baseline").adversary.method == "none"
    assert load_config("label_adversary").adversary.method == "label"
    # everything not named in the experiment file keeps the base default
    assert adv.model.fused_dim == base_keys["model"]["fused_dim"]
    assert adv.experiment == "adversarial"


def test_overrides_are_typed_and_merged():
    cfg = load_config("baseline", [("trainer.max_epochs", "3"), ("adversary.weight", "2.5"),
                                   ("logger.wandb.tags", "[a,b]"), ("output_dir", "x/y")])
    assert cfg.trainer.max_epochs == 3 and isinstance(cfg.trainer.max_epochs, int)
    assert cfg.adversary.weight == 2.5
    assert list(cfg.logger.wandb.tags) == ["a", "b"]
    assert cfg.output_dir == "x/y"


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError) as e:
        load_config("baseline", [("trainer.max_epoch", "3")])
    assert "'trainer.max_epoch'" in str(e.value) and "'trainer.max_epochs'" in str(e.value)


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError) as e:
        load_config("baseline", [("trainer.max_epochs", "many")])
    assert "trainer.max_epochs" in str(e.value) and "int" in str(e.value)


def test_unknown_choice_is_rejected():
    with pytest.raises(ConfigError, match="adversary.method"):
        load_config("baseline", [("adversary.method", "magic")])


def test_ddp_spawn_is_refused_with_what_to_use_instead():
    for spawn in ("ddp_spawn", "ddp_spawn_find_unused_parameters_true"):
        with pytest.raises(ConfigError, match=r"trainer.strategy.*not ddp_spawn \(use ddp"):
            load_config("adversarial", [("trainer.strategy", spawn)])
    assert load_config("adversarial", [("trainer.strategy", "ddp")]).trainer.strategy == "ddp"


def test_unknown_experiment_lists_available():
    with pytest.raises(ConfigError) as e:
        load_config("nonexistent")
    for name in available_experiments():
        assert name in str(e.value)
    assert {"baseline", "adversarial", "label_adversary"} <= set(available_experiments())


def test_override_syntax():
    assert parse_overrides(["--seed=3", "experiment=adversarial", "a.b=c=d"]) == (
        "adversarial", [("seed", "3"), ("a.b", "c=d")])
    with pytest.raises(ConfigError, match="malformed override 'a.b'"):
        parse_overrides(["a.b"])


def test_config_is_read_only():
    cfg = load_config("baseline")
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        cfg.seed = 5


def test_a_saved_config_from_before_a_key_existed_takes_todays_default(tmp_path):
    from omegaconf import OmegaConf

    from fair_lightning.config import load_config_file, save_config

    cfg = OmegaConf.to_container(load_config("adversarial", []))
    del cfg["adversary"]["dependence_measure"]
    path = tmp_path / "config.yaml"
    save_config(OmegaConf.create(cfg), path)
    assert load_config_file(path).adversary.dependence_measure == \
        load_config("baseline", []).adversary.dependence_measure


def test_list_vocabularies_come_from_the_model_and_the_attackers():
    from fair_lightning.audit.attackers import FAMILIES
    from fair_lightning.models import REPRESENTATIONS

    every = load_config("baseline", [("probe.layers", f"[{','.join(REPRESENTATIONS)}]"),
                                     ("probe.attackers", f"[{','.join(FAMILIES)}]")])
    assert list(every.probe.attackers) == list(FAMILIES)
    for bad in ("[forest]", "[]", "[linear,linear]"):
        with pytest.raises(ConfigError, match="probe.attackers"):
            load_config("baseline", [("probe.attackers", bad)])
    with pytest.raises(ConfigError, match="probe.layers"):
        load_config("baseline", [("probe.layers", "[fused,logits]")])


def test_a_rule_sits_on_its_field_and_names_the_key():
    """Ranges and vocabularies are read from the schema's fields; the synthetic source's
    ranges are its own table, checked at load time too."""
    from data_modules.sources.synthetic import RANGES

    cases = [("model.dropout", "1.0", "must be in \\[0, 1\\), got 1.0"),
             ("probe.cv_folds", "1", "must be >= 2"),
             ("adversary.nocco_eps", "0.0", "must be > 0"),
             ("fairness.top_q", "1.5", "must be in \\(0, 1\\)"),
             ("data.synthetic.image_size", "4", "must be " + re.escape(RANGES["image_size"][1])),
             ("data.synthetic.audio_seconds", "[2.0,1.0]", "must be .*min <= max, got \\[2.0, 1.0\\]"),
             ("data.chalearn.split_fractions", "[0.5,0.5]", "must be three positive numbers"),
             ("optim.loss", "l3", "must be mse, mae or huber, got 'l3'"),
             ("logger.wandb.log_model", "sometimes", "must be false, true or all")]
    for key, value, message in cases:
        with pytest.raises(ConfigError, match=f"key '{re.escape(key)}' {message}"):
            load_config("baseline", [(key, value)])


def test_erasure_settings_that_cannot_work_fail_before_any_work():
    cases = [("adversarial", [("erasure.rank", "32")], "erase all 32 directions"),
             ("baseline", [("erasure.enabled", "true"), ("erasure.rank", "2")],
              "adversary.method=indirect"),
             ("label_erasure", [("erasure.residual", "true")], "erasure.proxy=face"),
             ("adversarial", [("trainer.test_checkpoint", "best")], "test_checkpoint=last")]
    for exp, overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(exp, overrides)
    load_config("baseline", [("erasure.enabled", "true")])  # the task subspace needs no proxy


def test_real_data_defaults_resolve_with_no_other_key(tmp_path):
    real = load_config("adversarial", [("data.source", "chalearn"),
                                       ("data.chalearn.root", str(tmp_path))])
    assert real.data.preprocess.detector == "dlib_then_haar"
    assert real.data.preprocess.face_embedding == "dlib"
    assert real.model.face_encoder == "pretrained"  # dlib's descriptor is the face proxy
    assert real.model.face_proxy_components == 2  # ... its leading directions across people
    assert real.erasure.rank == 2  # ... erased from h by LEACE at their full rank
    synthetic = load_config("adversarial", [])
    assert synthetic.data.preprocess.detector == "haar"
    assert synthetic.data.preprocess.face_embedding == "none"
    assert synthetic.model.face_encoder == "identity"
    assert synthetic.model.face_proxy_components == 0
    assert synthetic.erasure.rank == 0  # the whole face embedding is not erased
    # an explicit choice wins over auto
    chosen = load_config("adversarial", [("data.source", "chalearn"),
                                         ("data.chalearn.root", str(tmp_path)),
                                         ("data.preprocess.face_embedding", "none"),
                                         ("data.preprocess.detector", "haar")])
    assert chosen.model.face_encoder == "identity"
    assert chosen.model.face_proxy_components == 0  # the identity encoder is used whole
    whole = load_config("adversarial", [("data.source", "chalearn"),
                                        ("data.chalearn.root", str(tmp_path)),
                                        ("model.face_proxy_components", "0")])
    assert whole.model.face_proxy_components == 0 and whole.erasure.rank == 0
    assert load_config("baseline", [("erasure.enabled", "true"),
                                    ("erasure.rank", "auto")]).erasure.rank == 0
    with pytest.raises(ConfigError, match="face_proxy_components' must be auto or a count"):
        load_config("adversarial", [("model.face_proxy_components", "two")])
    with pytest.raises(ConfigError, match="erasure.rank' must be auto or a count"):
        load_config("adversarial", [("erasure.rank", "true")])
    # the saved config names what ran
    assert "auto" not in (real.data.preprocess.detector, real.data.preprocess.face_embedding,
                          real.model.face_encoder)


def test_a_real_data_run_without_dlib_stops_with_the_install_line(tmp_path, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dlib" else find(name, *a))
    with pytest.raises(ConfigError, match=r"dlib is not installed: `pip install .fair_lightning\[faces\]."):
        load_config("adversarial", [("data.source", "chalearn"),
                                    ("data.chalearn.root", str(tmp_path))])
    load_config("adversarial", [])  # synthetic data needs no dlib


def test_one_default_experiment_for_every_entry_point():
    """`python -m fair_lightning.cli.train` with no experiment runs what `make train` runs."""
    import re

    from fair_lightning.config import DEFAULT_EXPERIMENT, config_from_argv

    make_default = re.search(r"^EXP\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert make_default and make_default.group(1) == DEFAULT_EXPERIMENT == "adversarial"
    assert config_from_argv(["seed=3"]).experiment == DEFAULT_EXPERIMENT
    assert config_from_argv(["experiment=baseline"]).experiment == "baseline"


def test_an_experiment_file_of_ones_own(tmp_path):
    own = tmp_path / "quick.yaml"
    own.write_text("adversary:\n  method: indirect\n  weight: 0.5\n")
    cfg = load_config(str(own), [("trainer.max_epochs", "2")])
    assert cfg.experiment == "quick" and cfg.adversary.weight == 0.5
    assert cfg.trainer.max_epochs == 2 and cfg.model.fused_dim == 32  # the rest from base
    with pytest.raises(ConfigError, match="experiment file not found: .*missing.yaml"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="nope.yaml: unknown key 'adversary.wieght'"):
        (tmp_path / "nope.yaml").write_text("adversary:\n  wieght: 1\n")
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="or the path of a .yaml file"):
        load_config("adversarial_typo")


def test_a_config_carried_as_a_dict_loads_as_its_file_does(tmp_path):
    """What a checkpoint carries: the resolved config as plain containers. It loads to the
    same config as the run's config.yaml, older key names mapped, overrides applied and
    checked."""
    from fair_lightning.config import load_config_dict, load_config_file, save_config

    cfg = load_config("adversarial", [("seed", "3")])
    save_config(cfg, tmp_path / "config.yaml")
    carried = OmegaConf.to_container(cfg, resolve=True)
    assert load_config_dict(carried, "ckpt") == load_config_file(tmp_path / "config.yaml")
    carried["adversary"]["objective"] = "hsic"  # a name from before the rename
    again = load_config_dict(carried, "ckpt", [("trainer.max_epochs", "2")])
    assert again.adversary.objective == "dependence" and again.trainer.max_epochs == 2
    with pytest.raises(ConfigError, match="ckpt: unknown key 'model.wat'"):
        load_config_dict({**carried, "model": {**carried["model"], "wat": 1}}, "ckpt")
