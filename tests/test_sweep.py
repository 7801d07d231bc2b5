"""Sweeps offline through W&B's own engine, with the same YAML the server would take."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fair_lightning.sweep import expand_command, load_sweep, main, next_trial, trial_args
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def _tiny_args(tmp_path) -> str:
    # the cache is shared by every trial; each trial gets its own output_dir from the runner
    keep = {k: v for k, v in tiny_overrides(tmp_path) if k != "output_dir"}
    keep["trainer.max_epochs"] = "1"
    return " ".join(f"{k}={v}" for k, v in keep.items())


def _grid(tmp_path, values) -> Path:
    cfg = {"name": "tiny", "program": "fair_lightning/train.py", "method": "grid",
           "metric": {"name": "select/score", "goal": "maximize"},
           "parameters": {"optim.lr": {"values": values}},
           "command": ["${env}", "${interpreter}", "-m", "fair_lightning.train",
                       "experiment=baseline", "${args_no_hyphens}"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "experiments" / "sweeps")
                                        .glob("*.yaml")))
def test_shipped_sweeps_are_valid_and_select_on_validation(name, tmp_path):
    cfg = load_sweep(ROOT / "experiments" / "sweeps" / name)
    first = next_trial(cfg, tmp_path)  # the engine proposes a full configuration
    assert set(first["config"]) == set(cfg["parameters"])
    assert cfg["metric"]["name"] == "select/score"
    assert "${args_no_hyphens}" in cfg["command"]
    from fair_lightning.config import load_config

    keys = load_config("adversarial", [])
    for key in cfg["parameters"]:  # every swept key exists in the config
        assert key == "seed" or key.split(".")[0] in keys, key


def test_args_and_command_follow_the_agents_macros():
    args = trial_args({"b.x": {"value": 0.5}, "a": {"value": [1, 2]}})
    assert args == ["a=[1, 2]", "b.x=0.5"]
    cmd = expand_command(["${env}", "${interpreter}", "-m", "m", "${args_no_hyphens}"], args,
                         None)
    assert cmd == [sys.executable, "-m", "m", "a=[1, 2]", "b.x=0.5"]


def test_an_offline_grid_runs_continues_and_shares_the_work(tmp_path, capsys):
    sweep = _grid(tmp_path, [0.001, 0.003, 0.01])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    runs = tmp_path / "runs"
    # two agents at once: the lock hands each configuration to one of them
    agents = [subprocess.Popen([sys.executable, "-m", "fair_lightning.sweep", str(sweep),
                                "--offline", "--runs", str(runs), "--args",
                                _tiny_args(tmp_path)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outs = [a.communicate(timeout=600)[0] for a in agents]
    assert all(a.returncode == 0 for a in agents), outs
    trials = [json.loads(p.read_text()) for p in sorted((runs / "tiny").glob("trial-*/trial.json"))]
    assert len(trials) == 3 and all(t["state"] == "finished" for t in trials)
    lrs = sorted(t["config"]["optim.lr"]["value"] for t in trials)
    assert lrs == [0.001, 0.003, 0.01]
    assert all("started" in t for t in trials)
    for t in trials:
        s = json.loads((runs / "tiny" / t["name"] / "summary.json").read_text())
        cfg = yaml.safe_load((runs / "tiny" / t["name"] / "run" / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == t["config"]["optim.lr"]["value"]
        assert cfg["logger"]["wandb"]["group"] == "tiny"
        # the metric comes from validation data only
        layer = "erased" if "fit_leak/erased/gender/clip/bal_acc" in s else "fused"  # h, full width
        cells = [(s[f"fit_leak/{layer}/{a}/{lv}/bal_acc"], s[f"fit_leak/{layer}/{a}/{lv}/chance"])
                 for a in ("gender", "ethnicity") for lv in ("clip", "person")]
        leak = sum(max(0.0, (b - c) / (1 - c)) for b, c in cells) / 4
        assert math.isclose(s["select/val_leak_excess"], leak)
        assert math.isclose(s["select/score"], s["select/val_task"] - leak)
    # a rerun continues: the grid is done, nothing runs again
    capsys.readouterr()
    assert main([str(sweep), "--offline", "--runs", str(runs), "--args", _tiny_args(tmp_path)]) == 0
    assert "0 trial(s) run now" in capsys.readouterr().out
    assert len(list((runs / "tiny").glob("trial-*"))) == 3
    # the Pareto report reads the sweep
    from fair_lightning.report import main as report_main

    assert report_main([str(runs / "tiny"), "--sweep"]) == 0
    md = (runs / "tiny" / "pareto" / "pareto.md").read_text()
    assert "3 finished trial(s)" in md and "**Selected on validation**" in md
    assert md.count("| trial-0") == 3 and "| optim.lr |" in md and "over 1 seed(s)" in md
    assert (runs / "tiny" / "pareto" / "pareto.png").stat().st_size > 1000


def test_pareto_front_keeps_the_non_dominated():
    from fair_lightning.report import pareto_front

    pts = [(0.1, 0.5), (0.2, 0.7), (0.15, 0.4), (0.3, 0.7), (0.1, 0.5)]
    assert pareto_front(pts) == [0, 1, 4]  # (0.15,.4) and (0.3,.7) are beaten


def test_a_bad_sweep_file_names_itself(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sideways\nparameters: {}\n")
    assert main([str(bad), "--offline"]) == 2
    assert "bad.yaml: not a valid W&B sweep" in capsys.readouterr().err


def test_run_cap_is_honoured(tmp_path):
    sweep = _grid(tmp_path, [0.001, 0.003, 0.01])
    cfg = yaml.safe_load(sweep.read_text())
    cfg["run_cap"] = 1
    sweep.write_text(yaml.safe_dump(cfg))
    assert main([str(sweep), "--offline", "--runs", str(tmp_path / "runs"), "--args",
                 _tiny_args(tmp_path)]) == 0
    assert len(list((tmp_path / "runs" / "tiny").glob("trial-*"))) == 1


def test_select_score_is_nan_without_an_audit_and_ignores_leakage_below_chance():
    from fair_lightning.config import load_config
    from fair_lightning.train import selection_metrics

    cfg = load_config("adversarial", [])
    none = selection_metrics(cfg, {"val/pearson": 0.8}, {})
    assert math.isnan(none["select/score"]) and none["select/val_task"] == 0.8
    below = {f"fit_leak/fused/{a}/{lv}/{k}": v for a, c in (("gender", 0.5), ("ethnicity", 1 / 3))
             for lv in ("clip", "person") for k, v in (("bal_acc", c - 0.05), ("chance", c))}
    s = selection_metrics(cfg, {"val/pearson": 0.8}, below)
    assert s["select/val_leak_excess"] == 0.0 and s["select/score"] == 0.8


def test_select_score_ranks_runs_that_all_leak_fully_at_person_level():
    from fair_lightning.config import load_config
    from fair_lightning.train import selection_metrics

    cfg = load_config("adversarial", [])

    def run(gender_clip):
        cells = {("gender", "clip"): (gender_clip, 0.5), ("gender", "person"): (1.0, 0.5),
                 ("ethnicity", "clip"): (0.6, 1 / 3), ("ethnicity", "person"): (1.0, 1 / 3)}
        summary = {f"fit_leak/fused/{a}/{lv}/{k}": v for (a, lv), (b, c) in cells.items()
                   for k, v in (("bal_acc", b), ("chance", c))}
        return selection_metrics(cfg, {"val/pearson": 0.7}, summary)

    runs = [run(g) for g in (1.0, 0.8, 0.6)]
    leak = [r["select/val_leak_excess"] for r in runs]
    assert leak[0] > leak[1] > leak[2]  # the worst cell alone read 0.5 for all three
    assert [r["select/score"] for r in runs] == sorted(r["select/score"] for r in runs)
    # (0.6 - 0.5)/0.5, 1, (0.6 - 1/3)/(2/3), 1 -> mean 0.7
    assert math.isclose(leak[2], (0.2 + 1 + 0.4 + 1) / 4)


def test_online_settings_become_fixed_parameters_and_need_a_login(tmp_path, capsys,
                                                                   monkeypatch):
    from fair_lightning.sweep import with_fixed_args

    cfg = load_sweep(ROOT / "experiments" / "sweeps" / "adversarial_grid.yaml")
    fixed = with_fixed_args(cfg, ["trainer.accelerator=gpu", "data.batch_size=64"])
    assert fixed["parameters"]["trainer.accelerator"] == {"value": "gpu"}
    assert fixed["parameters"]["data.batch_size"] == {"value": 64}
    assert fixed["parameters"]["adversary.weight"] == cfg["parameters"]["adversary.weight"]
    with pytest.raises(ValueError, match="not key=value"):
        with_fixed_args(cfg, ["gpu"])
    # joining a server's sweep without a login: refused, nothing run
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    sweep = str(ROOT / "experiments" / "sweeps" / "adversarial_grid.yaml")
    assert main([sweep, "--sweep-id", "me/proj/abc", "--runs", str(tmp_path)]) == 2
    assert "need a W&B login" in capsys.readouterr().err
    assert not any(tmp_path.glob("*/trial-*"))
