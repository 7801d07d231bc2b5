"""W&B sweeps: the online agent with this interpreter's `wandb`, and the offline engine
(W&B's own `sweeps` package) running trials as subprocesses under a file lock. The
command line is `fair_lightning.cli.sweep`."""


from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from data_modules.files import atomic_write, pid_alive
from fair_lightning.ops.runtime import wandb_command

TRIAL = "trial.json"


def load_sweep(path: Path) -> dict:
    import warnings

    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the sweep file: {e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from sweeps import schema_violations_from_proposed_config
        except ImportError:
            raise ValueError("sweep files are checked, and offline sweeps run, by W&B's own "
                             "sweep engine, which is not installed: `pip install "
                             "'fair_lightning[sweeps]'`") from None

        # run_cap is the server's field (the local engine's schema lacks it); honoured here
        bad = schema_violations_from_proposed_config(
            {k: v for k, v in cfg.items() if k != "run_cap"})
    if bad:
        raise ValueError(f"{path}: not a valid W&B sweep: {'; '.join(map(str, bad))}")
    if "command" not in cfg:
        raise ValueError(f"{path}: the sweep needs a 'command' (see experiments/sweeps/)")
    return cfg


def _plain(value):
    return value.item() if hasattr(value, "item") else value  # numpy scalars from the engine


def trial_args(params: dict) -> list[str]:
    """`key=value` per parameter, as W&B's ${args_no_hyphens} (lists in YAML flow form)."""
    out = []
    for key, spec in sorted(params.items()):
        value = _plain(spec["value"] if isinstance(spec, dict) and "value" in spec else spec)
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        out.append(f"{key}={text}")
    return out


def expand_command(command: list[str], args: list[str], program: str | None) -> list[str]:
    """W&B's macros: ${env}, ${interpreter}, ${program}, ${args}, ${args_no_hyphens}."""
    out = []
    for part in command:
        if part == "${env}":
            continue  # the environment is inherited
        if part == "${interpreter}":
            out.append(sys.executable)
        elif part == "${program}":
            out.append(program or "")
        elif part == "${args_no_hyphens}":
            out.extend(args)
        elif part == "${args}":
            out.extend(f"--{a}" for a in args)
        else:
            out.append(part)
    return out


@contextmanager
def locked(path: Path):
    """An exclusive lock on the sweep folder: agents pick trials one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _save(path: Path, trial: dict) -> None:
    text = json.dumps(trial, indent=1)
    atomic_write(path, text)


def read_trials(root: Path, metric: str) -> list[dict]:
    """Every trial with its state; a 'running' trial whose agent died counts as crashed."""
    trials = []
    for f in sorted(root.glob(f"trial-*/{TRIAL}")):
        t = json.loads(f.read_text())
        if t["state"] == "running" and not pid_alive(t.get("pid", -1)):
            t["state"] = "crashed"
        summary = f.parent / "summary.json"
        if t["state"] == "finished" and summary.is_file():
            t["metric"] = json.loads(summary.read_text()).get(metric)
        trials.append(t)
    return trials


def _engine_runs(trials: list[dict], metric: str):
    from sweeps import RunState, SweepRun

    states = {"finished": RunState.finished, "running": RunState.running,
              "failed": RunState.failed, "crashed": RunState.crashed}
    return [SweepRun(name=t["name"], config=t["config"], state=states[t["state"]],
                     summaryMetrics={metric: t["metric"]} if t.get("metric") is not None
                     else {}) for t in trials]


def next_trial(cfg: dict, root: Path) -> dict | None:
    """Under the lock: ask the engine for the next configuration and claim a trial folder."""
    import warnings

    metric = cfg["metric"]["name"]
    with locked(root / ".lock"):
        trials = read_trials(root, metric)
        if cfg.get("run_cap") and len(trials) >= int(cfg["run_cap"]):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sweeps import next_run

            engine_cfg = {k: v for k, v in cfg.items() if k != "run_cap"}
            proposal = next_run(engine_cfg, _engine_runs(trials, metric), validate=True)
        if proposal is None:
            return None
        n = 1 + max((int(t["name"].split("-")[1]) for t in trials), default=0)
        trial = {"name": f"trial-{n:03d}", "state": "running", "pid": os.getpid(),
                 "config": {k: {"value": _plain(v["value"])} for k, v in proposal.config.items()},
                 "started": time.time()}
        folder = root / trial["name"]
        folder.mkdir()
        _save(folder / TRIAL, trial)
        return trial


def run_offline(sweep_file: Path, cfg: dict, *, name: str, count: int | None,
                extra: list[str], runs_root: Path) -> list[dict]:
    root = runs_root / name
    done = []
    while count is None or len(done) < count:
        trial = next_trial(cfg, root)
        if trial is None:
            break
        folder = root / trial["name"]
        args = trial_args(trial["config"]) + extra + [
            f"output_dir={folder / 'run'}", f"logger.wandb.group={name}"]
        cmd = expand_command(cfg["command"], args, cfg.get("program"))
        print(f"[{name}] {trial['name']}: {' '.join(trial_args(trial['config']))}", flush=True)
        with open(folder / "log.txt", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        run_dir = folder / "run"
        if rc == 0 and (run_dir / "summary.json").is_file():
            text = (run_dir / "summary.json").read_text()
            atomic_write(folder / "summary.json", text)
        trial.update(state="finished" if rc == 0 else "failed", exitcode=rc,
                     ended=time.time())
        _save(folder / TRIAL, trial)  # other agents read it: never half a file
        done.append(trial)
        print(f"[{name}] {trial['name']}: {trial['state']} (log {folder / 'log.txt'})",
              flush=True)
    return done


def with_fixed_args(cfg: dict, extra: list[str]) -> dict:
    """The sweep with `key=value` settings added as fixed parameters: the server's agent
    builds each trial's command from the parameters alone."""
    import yaml

    params = dict(cfg.get("parameters", {}))
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--args: {item!r} is not key=value")
        params[key] = {"value": yaml.safe_load(value)}
    return {**cfg, "parameters": params}


def interpreter_dir(shim_root: Path) -> Path:
    """A folder whose `python` is this interpreter: its own folder when its `python` is
    it (a virtualenv), else a shim written under `shim_root`."""
    own = Path(sys.executable).parent
    if (own / "python").resolve() == Path(sys.executable).resolve():
        return own
    shim = shim_root / ".interpreter"
    shim.mkdir(parents=True, exist_ok=True)
    text = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n'

    def write(path: Path) -> None:
        path.write_text(text)
        path.chmod(0o755)

    atomic_write(shim / "python", write)
    return shim


def agent_env(name: str, shim_root: Path) -> dict[str, str]:
    """The environment `wandb agent` runs with: the trials' `python` is this interpreter,
    and their W&B runs are grouped under the sweep's name."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(interpreter_dir(shim_root)), env.get("PATH", "")])
    env.setdefault("WANDB_RUN_GROUP", name)
    return env


def project_args(project: str | None, entity: str | None) -> list[str]:
    return ([f"--project={project}"] if project else []) + (
        [f"--entity={entity}"] if entity else [])


def create_online(sweep_file: Path, cfg: dict, extra: list[str], runs_root: Path,
                  name: str, project: str | None = None,
                  entity: str | None = None) -> str | None:
    """Create the sweep on the server; returns its `entity/project/id` (None on failure)."""
    import yaml

    if extra:  # the file as run, with the fixed settings, kept beside the offline runs
        sweep_file = runs_root / name / "sweep.yaml"
        sweep_file.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(with_fixed_args(cfg, extra), sort_keys=False)
        atomic_write(sweep_file, text)
    out = subprocess.run([wandb_command(), "sweep", *project_args(project, entity),
                          str(sweep_file)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    ids = [w for line in text.splitlines() if "wandb agent" in line
           for w in line.split("wandb agent", 1)[1].split()[:1]]
    if out.returncode or not ids:
        print(f"error: wandb sweep failed:\n{text[-2000:]}", file=sys.stderr)
        return None
    return ids[0]


def run_agent(sweep_id: str, count: int | None, *, name: str, runs_root: Path,
              project: str | None = None, entity: str | None = None) -> int:
    # a full entity/project/id names its project; a bare id is looked up in --project
    where = [] if sweep_id.count("/") == 2 else project_args(project, entity)
    agent = [wandb_command(), "agent", *where, sweep_id] + (
        ["--count", str(count)] if count else [])
    print(f"[{name}] {shlex.join(agent)}", flush=True)
    return subprocess.call(agent, env=agent_env(name, runs_root / name))


def sweep_project(cfg: dict, project: str | None, entity: str | None):
    """(project, entity) of an online sweep: the command line, else the sweep file, else the
    experiment defaults (`logger.wandb`)."""
    from omegaconf import OmegaConf

    from fair_lightning.config import EXPERIMENTS_DIR

    w = OmegaConf.load(EXPERIMENTS_DIR / "base.yaml").logger.wandb
    return (project or cfg.get("project") or w.project,
            entity or cfg.get("entity") or w.entity)
