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

from fair_lightning.cli.sweep import main
from fair_lightning.ops.sweep import expand_command, load_sweep, next_trial, trial_args
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _tiny_args(tmp_path) -> str:
    # the cache is shared by every trial; each trial gets its own output_dir from the runner
    keep = {k: v for k, v in tiny_overrides(tmp_path) if k != "output_dir"}
    keep["trainer.max_epochs"] = "1"
    return " ".join(f"{k}={v}" for k, v in keep.items())


def _grid(tmp_path, values) -> Path:
    cfg = {"name": "tiny", "program": "fair_lightning/cli/train.py", "method": "grid",
           "metric": {"name": "select/score", "goal": "maximize"},
           "parameters": {"optim.lr": {"values": values}},
           "command": ["${env}", "${interpreter}", "-m", "fair_lightning.cli.train",
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
    agents = [subprocess.Popen([sys.executable, "-m", "fair_lightning.cli.sweep", str(sweep),
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
    from fair_lightning.cli.report import main as report_main

    assert report_main([str(runs / "tiny"), "--sweep"]) == 0
    md = (runs / "tiny" / "pareto" / "pareto.md").read_text()
    assert "3 finished trial(s)" in md and "**Selected on validation**" in md
    assert md.count("| trial-0") == 3 and "| optim.lr |" in md and "over 1 seed(s)" in md
    assert (runs / "tiny" / "pareto" / "pareto.png").stat().st_size > 1000


def test_pareto_front_keeps_the_non_dominated():
    from fair_lightning.audit.report import pareto_front

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
    from fair_lightning.experiment import selection_metrics

    cfg = load_config("adversarial", [])
    none = selection_metrics(cfg, {"val/pearson": 0.8}, {})
    assert math.isnan(none["select/score"]) and none["select/val_task"] == 0.8
    below = {f"fit_leak/fused/{a}/{lv}/{k}": v for a, c in (("gender", 0.5), ("ethnicity", 1 / 3))
             for lv in ("clip", "person") for k, v in (("bal_acc", c - 0.05), ("chance", c))}
    s = selection_metrics(cfg, {"val/pearson": 0.8}, below)
    assert s["select/val_leak_excess"] == 0.0 and s["select/score"] == 0.8


def test_select_score_ranks_runs_that_all_leak_fully_at_person_level():
    from fair_lightning.config import load_config
    from fair_lightning.experiment import selection_metrics

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
    from fair_lightning.ops.sweep import with_fixed_args

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


# ------------------------------------------------------------------ online, with a stand-in
STANDIN = '''#!{python}
"""A stand-in `wandb`: records what it is asked and the environment it gets; `sweep` prints
the server's answer, `agent` starts a trial's interpreter the way W&B's agent does
(`/usr/bin/env python`) and records which one ran."""
import json, os, subprocess, sys
rec = {{"argv": sys.argv[1:], "path": os.environ["PATH"],
        "group": os.environ.get("WANDB_RUN_GROUP")}}
if sys.argv[1] == "sweep":
    print("wandb: Run sweep agent with: wandb agent ent/proj/abc123")
elif sys.argv[1] == "agent":
    rec["trial_interpreter"] = subprocess.run(
        ["/usr/bin/env", "python", "-c", "import sys; print(sys.executable)"],
        capture_output=True, text=True, check=True).stdout.strip()
with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps(rec) + "\\n")
'''


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory):
    """A virtualenv as a user's (its bin/ not on PATH), seeing this project's packages, with
    the stand-in as its `wandb`."""
    import site

    venv = tmp_path_factory.mktemp("user") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    packages = next(Path(p) for p in site.getsitepackages() if p.endswith("site-packages"))
    own = next((venv / "lib").glob("python*/site-packages"))
    (own / "project.pth").write_text(f"import site; site.addsitedir({str(packages)!r})\n")
    wandb = venv / "bin" / "wandb"
    wandb.write_text(STANDIN.format(python=sys.executable))
    wandb.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: make installs nothing
    return venv


def _online_env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # a login without the network: the stand-in answers for the server
    env.update(WANDB_API_KEY="x" * 40, HOME=str(tmp_path), STANDIN_LOG=str(tmp_path / "log"),
               **extra)
    return env


def _calls(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]


def test_make_sweep_online_runs_the_venv_wandb_and_pins_the_trial_interpreter(
        tmp_path, user_venv):
    out = subprocess.run(["make", "--no-print-directory", "sweep", f"VENV={user_venv}",
                          "SWEEP=experiments/sweeps/adversarial_grid.yaml", "COUNT=1"],
                         cwd=ROOT, env=_online_env(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sweep, agent = _calls(tmp_path)
    assert sweep["argv"] == ["sweep", "--project=fair_lightning",
                             "experiments/sweeps/adversarial_grid.yaml"]
    assert agent["argv"] == ["agent", "ent/proj/abc123", "--count", "1"]
    # W&B's agent runs `/usr/bin/env python`: the user's venv interpreter, not the system's
    assert agent["trial_interpreter"] == str(user_venv / "bin" / "python")
    assert agent["path"].split(os.pathsep)[0] == str(user_venv / "bin")
    assert agent["group"] == "adversarial_grid"


def test_sbatch_agents_join_a_sweep_by_id_with_the_venv(tmp_path, user_venv):
    env = _online_env(tmp_path, PYTHON=str(user_venv / "bin" / "python"), COUNT="2",
                      SWEEP="experiments/sweeps/adversarial_bayes.yaml",
                      SWEEP_ID="ent/proj/xyz789", SLURM_SUBMIT_DIR=str(ROOT))
    out = subprocess.run(["bash", "experiments/cluster/sweep.sbatch"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (agent,) = _calls(tmp_path)
    assert agent["argv"] == ["agent", "ent/proj/xyz789", "--count", "2"]
    assert agent["trial_interpreter"] == str(user_venv / "bin" / "python")
    assert agent["group"] == "adversarial_bayes"


def test_a_bare_sweep_id_is_looked_up_in_the_project(tmp_path, user_venv):
    env = _online_env(tmp_path)
    out = subprocess.run([str(user_venv / "bin" / "python"), "-m", "fair_lightning.cli.sweep",
                          "experiments/sweeps/adversarial_grid.yaml", "--sweep-id", "abc123",
                          "--project", "hiring", "--entity", "lab"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (agent,) = _calls(tmp_path)
    assert agent["argv"] == ["agent", "--project=hiring", "--entity=lab", "abc123"]


def test_a_trial_records_the_run_id_its_agent_gave(tmp_path, monkeypatch):
    from fair_lightning.lightning.resume import record_start

    monkeypatch.setenv("WANDB_RUN_ID", "agent42")
    assert record_start(tmp_path, None)["wandb_id"] == "agent42"
    monkeypatch.delenv("WANDB_RUN_ID")
    (tmp_path / "other").mkdir()
    assert record_start(tmp_path / "other", None)["wandb_id"] not in ("agent42", "")


def test_without_the_sweep_engine_a_sweep_stops_with_the_install_line(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "sweeps", None)  # as if not installed
    assert main([str(ROOT / "experiments" / "sweeps" / "adversarial_grid.yaml"),
                 "--offline", "--runs", str(tmp_path)]) == 2
    assert "pip install 'fair_lightning[sweeps]'" in capsys.readouterr().err
