"""Train, test, probe and report one experiment.

    python -m fair_lightning.cli.train experiment=<name> [key=value ...]

Overrides use dotted keys from fair_lightning/experiments/base.yaml (`--key=value` works
too, as the W&B agent passes them). The last line printed is `run dir: <path>`.
"""

from __future__ import annotations

import sys

from fair_lightning.ops.runtime import quiet_warnings, set_offline_env, start_cli

set_offline_env()

from fair_lightning.config import (  # noqa: E402
    DEFAULT_EXPERIMENT,
    available_experiments,
    config_from_argv,
)

HELP = f"""usage: python -m fair_lightning.cli.train experiment=NAME [key=value ...]

Trains the multimodal scorer of experiment NAME, tests the checkpoint named by
trainer.test_checkpoint (the last one by default), probes its representations for
gender/ethnicity and writes a run directory (a new one: an existing run's is refused,
unless resume continues it).

  experiment=NAME     one of: {', '.join(available_experiments())} (default: {DEFAULT_EXPERIMENT}),
                      or path/to/yours.yaml (keys of base.yaml it changes; its stem names it)
  key=value           any dotted key of fair_lightning/experiments/base.yaml, e.g.
                        trainer.max_epochs=5 adversary.weight=2 data.batch_size=64
                        output_dir=runs/mine logger.wandb.mode=disabled
  --key=value         same, as passed by a W&B sweep agent
  resume=auto         continue output_dir's run from its latest checkpoint (or start it)
  resume=PATH.ckpt    continue that checkpoint's run, in its run directory

Run dir: config.yaml, run.json, checkpoints/, csv/metrics.csv, summary.json, report.md,
plots/, wandb/. SLURM: experiments/cluster/train.sbatch (docs/running.md "Running on a cluster").
"""


def main(argv: list[str] | None = None) -> int:
    argv = start_cli(argv, HELP)
    if argv is None:
        return 0
    quiet_warnings()
    from fair_lightning.cli import user_errors
    from fair_lightning.experiment import run
    from fair_lightning.lightning.cluster import Requeued

    try:
        cfg = config_from_argv(argv)
        run_dir = run(cfg)
    except (*user_errors(), TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Requeued as e:
        print(str(e), file=sys.stderr)
        return 0
    from fair_lightning.ops.runtime import global_rank

    if global_rank() == 0:
        print(f"run dir: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
