"""Bad settings fail before any work: one `error:` line, exit status 2, no run directory.
A run directory holds one run. Each case reproduces a reported defect."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fair_lightning.cli.audit import main as audit_main
from fair_lightning.cli.train import main
from fair_lightning.config import load_config
from fair_lightning.experiment import run
from tests.conftest import tiny_overrides


def _args(tmp_path, **extra) -> list[str]:
    return ["experiment=baseline", *[f"{k}={v}" for k, v in tiny_overrides(tmp_path, **extra)]]


def _fails_cleanly(capsys, args, match: str, run_dir) -> None:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err  # no traceback
    assert match in err, err
    assert not os.path.exists(run_dir), "a failed start must leave no run directory"


@pytest.mark.parametrize("override, match", [
    ("data.batch_size=0", "'data.batch_size' must be >= 1"),
    ("data.batch_size=-3", "'data.batch_size' must be >= 1"),
    ("data.synthetic.num_identities=0", "every split needs at least 2"),
    ("data.synthetic.num_identities=2", "gives 1/1/0 people"),
    ("trainer.devices=0", "'trainer.devices' must be >= 1"),
    ("fairness.top_q=1.5", "'fairness.top_q' must be in (0, 1)"),
    ("trainer.max_epochs=0", "use make audit"),
    ("trainer.limit_train_batches=0", "'trainer.limit_train_batches' must be > 0"),
    ("probe.fit_split=val", "probe.fit_split=val"),
    ("probe.eval_split=train", "both 'train'"),
    ("data.synthetic.split_fractions=[0.5,0.2", "cannot be parsed"),
    ("adversary.weight=nan", "'adversary.weight' must be a finite number"),
    ("data.synthetic.leakage.video_gender=inf", "must be a finite number"),
    ("data=5", "'data' is a group of keys; set one of them, e.g. 'data.source=...'"),
    ("trainer.accelerator=gpu", "GPU(s) are visible"),
])
def test_bad_settings_fail_before_any_work(tmp_path, capsys, override, match):
    args = _args(tmp_path) + [override]
    if override == "trainer.accelerator=gpu":  # more GPUs than any machine here has
        args.append(f"trainer.devices={torch.cuda.device_count() + 1}")
    _fails_cleanly(capsys, args, match, tmp_path / "run")


def test_wandb_online_without_credentials_fails_before_any_work(tmp_path, capsys, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    _fails_cleanly(capsys, _args(tmp_path, **{"logger.wandb.mode": "online"}),
                   "no W&B credentials", tmp_path / "run")


def test_an_unusable_output_dir_fails_before_any_work(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "file"
    afile.write_text("x")
    capsys.readouterr()
    assert main(_args(tmp_path, output_dir=str(afile))) == 2
    assert "is a file" in capsys.readouterr().err
    # read-only parent (simulated: the tests may run as root, who can write anywhere)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path / "ro")
                        else real(p, m))
    (tmp_path / "ro").mkdir()
    _fails_cleanly(capsys, _args(tmp_path, output_dir=str(tmp_path / "ro" / "run")),
                   "is not writable", tmp_path / "ro" / "run")


def test_ddp_on_small_data_is_caught_before_launch(tmp_path, capsys):
    """The reported case: 2 processes, 40 people, batches of 32. litdata gave one rank no
    val batch, the run stopped after set-up and left the other process running."""
    args = _args(tmp_path, **{"data.synthetic.num_identities": "40",
                              "data.synthetic.clips_per_identity": "4",
                              "data.batch_size": "32", "trainer.devices": "2",
                              "trainer.strategy": "ddp"})
    _fails_cleanly(capsys, args, "gives 1 of the 2 processes no batch at data.batch_size=32",
                   tmp_path / "run")
    from data_modules.sources import build_shards
    from fair_lightning.experiment import rank_lengths

    cfg = load_config("baseline", [tuple(a.split("=", 1)) for a in args[1:]])
    val = build_shards(cfg.data) / "val"
    assert min(rank_lengths(val, 2, 16, 0, train=False)) > 0  # the suggested size works


def test_a_run_directory_holds_one_run(tmp_path, capsys):
    first = run(load_config("baseline", tiny_overrides(tmp_path, **{"probe.enabled": "false"})))
    summary = (first / "summary.json").read_bytes()
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    capsys.readouterr()
    assert main(_args(tmp_path, seed="5")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (first / "summary.json").read_bytes() == summary
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_audit_refuses_a_config_that_disagrees_with_the_checkpoint(tmp_path, capsys):
    run_dir = run(load_config("baseline", tiny_overrides(
        tmp_path, **{"model.fused_dim": "16", "probe.enabled": "false"})))
    capsys.readouterr()
    # the checkpoint carries its config: an edited config.yaml beside it changes nothing,
    # an override that disagrees with the trained model is refused
    cfg = (run_dir / "config.yaml").read_text().replace("fused_dim: 16", "fused_dim: 32")
    (run_dir / "config.yaml").write_text(cfg)
    assert audit_main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "model.fused_dim=32"]) == 2
    err = capsys.readouterr().err
    assert "model.fused_dim=16 (config: 32)" in err
    assert not list(run_dir.glob("audit-*"))
    for name, content in (("random.ckpt", os.urandom(512)), ("text.ckpt", b"not a checkpoint")):
        bad = run_dir / "checkpoints" / name
        bad.write_bytes(content)
        assert audit_main([f"ckpt={bad}"]) == 2
        assert f"{bad}: not a readable checkpoint" in capsys.readouterr().err
        assert not list(run_dir.glob("audit-*")), "a failed audit leaves nothing behind"


@pytest.mark.parametrize("cli", ["train", "audit"])
def test_an_erasure_error_after_training_is_an_error_line(cli, tmp_path, capsys, monkeypatch):
    """The erasure stage runs after the last epoch: its refusal (a rank that would erase
    every direction of h) is one `error:` line and exit 2, not a traceback."""
    import fair_lightning.experiment as experiment
    from fair_lightning.models.erasure import ErasureError

    def refuse(*args, **kwargs):
        raise ErasureError("erasure leaves 1.0e-13 of h's variance (round-off)")

    monkeypatch.setattr(experiment, "run" if cli == "train" else "audit", refuse)
    if cli == "train":
        code = main(_args(tmp_path))
    else:
        code = audit_main([f"ckpt={tmp_path / 'any.ckpt'}"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: erasure leaves")


def test_an_index_without_chunks_is_an_error(tmp_path, capsys):
    cfg = load_config("baseline", tiny_overrides(tmp_path, **{"probe.enabled": "false"}))
    from data_modules.sources import build_shards

    index = build_shards(cfg.data) / "test" / "index.json"
    meta = json.loads(index.read_text())
    meta["chunks"] = []
    index.write_text(json.dumps(meta))
    _fails_cleanly(capsys, _args(tmp_path, output_dir=str(tmp_path / "r2")), "holds no clips",
                   tmp_path / "r2")
