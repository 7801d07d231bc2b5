"""Re-run the leakage audit (probes + output fairness) on a saved checkpoint.

    python -m fair_lightning.cli.audit ckpt=<path.ckpt> [key=value ...]

The config the checkpoint carries (for a checkpoint from before checkpoints carried one,
the config.yaml of its run or audit directory) is the starting point; any override applies
on top, e.g. `data.synthetic.seed=7` to audit on other data, or `probe.fit_split=val`.
`erasure.*` keys that differ from the checkpoint's fit that erasure stage on the
checkpoint's trained weights first (e.g. `erasure.enabled=true erasure.proxy=labels
erasure.rank=5 erasure.head_dims=0` on a baseline run), and the refitted model, with its
config and its invite cut-off, is written as `erased.ckpt` in the audit dir (audit or score
that file later, from anywhere: its eraser is kept). Writes summary.json, report.md and
plots/ to `output_dir` (default: <run dir>/audit-<timestamp>, or beside a checkpoint kept
outside a run). The last line printed is `audit dir: <path>`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fair_lightning.ops.runtime import set_offline_env, start_cli

set_offline_env()


HELP = __doc__


def main(argv: list[str] | None = None) -> int:
    argv = start_cli(argv, HELP)
    if argv is None:
        return 0
    from fair_lightning.cli import checkpoint_command, user_errors
    from fair_lightning.experiment import audit

    try:
        args, overrides = checkpoint_command(argv, ())
        out = audit(Path(args["ckpt"]), overrides)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"audit dir: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
