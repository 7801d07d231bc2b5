"""Run a W&B sweep file: on the W&B server with a login, else offline through W&B's own
sweep engine (the `sweeps` package: grid, random, bayes), with the same YAML.

    python -m fair_lightning.cli.sweep experiments/sweeps/adversarial_grid.yaml [--count N]
        [--name NAME] [--args "key=value ..."] [--offline] [--sweep-id ID | --create-only]

Online, the sweep is created on the server (`--args` become fixed parameters of it) in
`--project` (default: the YAML's `project`, else `logger.wandb.project`) and this process is
one `wandb agent`; `--create-only` prints the id for other agents, which join with
`--sweep-id` (a job array: experiments/cluster/sweep.sbatch). The `wandb` command run is the
one installed beside this interpreter (a virtualenv's `bin/`, which `make` and `sbatch` do
not put on PATH), and the agent's trials run this interpreter: W&B's agent expands
`${interpreter}` to a bare `python` looked up on PATH, so this interpreter's folder goes
first on the agent's PATH. Trials are grouped under the sweep's name (`WANDB_RUN_GROUP`),
and each run records the id the agent gave it (`WANDB_RUN_ID`) in its run.json.

Offline, every trial is a subprocess running the YAML's `command` (with `${args_no_hyphens}`
and friends filled in as W&B's agent does) in `runs/sweeps/<name>/trial-NNN/`, its W&B run
grouped under the sweep's name (offline, so `wandb sync` uploads it later). The engine sees
every earlier trial with its state and `metric` value, honours `run_cap` and the goal, and a
rerun continues the sweep. Several agents may run at once: they pick trials under a file
lock. `--args` adds keys to every trial (e.g. a data source or a smaller benchmark).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from fair_lightning.ops.runtime import has_wandb_credentials
from fair_lightning.ops.sweep import (
    create_online,
    load_sweep,
    run_agent,
    run_offline,
    sweep_project,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fair_lightning.cli.sweep",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="a W&B sweep YAML (experiments/sweeps/)")
    p.add_argument("--count", type=int, default=None, help="trials for this agent")
    p.add_argument("--name", default=None, help="sweep name (default: the file's 'name')")
    p.add_argument("--args", default="", help="extra key=value settings for every trial")
    p.add_argument("--offline", action="store_true", help="never use the W&B server")
    p.add_argument("--runs", type=Path, default=Path("runs/sweeps"), help="offline root")
    p.add_argument("--sweep-id", default=None,
                   help="online: join this existing sweep (entity/project/id) as an agent")
    p.add_argument("--project", default=None, help="online: the W&B project (default: the "
                   "sweep file's 'project', else logger.wandb.project)")
    p.add_argument("--entity", default=None, help="online: the W&B entity (default: the "
                   "sweep file's 'entity', else logger.wandb.entity)")
    p.add_argument("--create-only", action="store_true",
                   help="online: create the sweep, print its id and exit (agents join it "
                        "with --sweep-id, e.g. one per task of a job array)")
    a = p.parse_args(argv)
    try:
        cfg = load_sweep(a.sweep)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = a.name or cfg.get("name") or a.sweep.stem
    extra = shlex.split(a.args)
    online = (not a.offline and has_wandb_credentials()
              and os.environ.get("WANDB_MODE") != "offline")
    if (a.create_only or a.sweep_id) and not online:
        print("error: --create-only and --sweep-id need a W&B login (offline sweeps need no "
              "creation: agents share the sweep folder)", file=sys.stderr)
        return 2
    if online:
        if a.sweep_id and extra:
            print("error: --args cannot change a sweep that exists on the server; give them "
                  "when creating it", file=sys.stderr)
            return 2
        project, entity = sweep_project(cfg, a.project, a.entity)
        try:
            sweep_id = a.sweep_id or create_online(a.sweep, cfg, extra, a.runs, name,
                                                   project, entity)
            if sweep_id is None:
                return 2
            if a.create_only:
                print(f"sweep id: {sweep_id}")
                return 0
            return run_agent(sweep_id, a.count, name=name, runs_root=a.runs,
                             project=project, entity=entity)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    done = run_offline(a.sweep, cfg, name=name, count=a.count, extra=extra,
                       runs_root=a.runs)
    failed = [t["name"] for t in done if t["state"] != "finished"]
    print(f"sweep dir: {a.runs / name} ({len(done)} trial(s) run now"
          + (f", failed: {', '.join(failed)}" if failed else "") + ")")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
