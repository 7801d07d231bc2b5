"""Re-run the leakage audit (probes + output fairness) on a saved checkpoint.

    python -m fair_lightning.cli.audit ckpt=<path.ckpt> [key=value ...]

The run's own config.yaml (two levels above the checkpoint) is the starting point; any
override applies on top, e.g. `data.synthetic.seed=7` to audit on other data, or
`probe.fit_split=val`. `erasure.*` keys that differ from the checkpoint's fit that erasure
stage on the checkpoint's trained weights first (e.g. `erasure.enabled=true
erasure.proxy=labels erasure.rank=5 erasure.head_dims=0` on a baseline run), and the
refitted model is written as `erased.ckpt` in the audit dir. Writes summary.json, report.md and plots/ to `output_dir`
(default: <run dir>/audit-<timestamp>). The last line printed is `audit dir: <path>`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fair_lightning.ops.runtime import set_offline_env, start_cli

set_offline_env()

from fair_lightning.config import (  # noqa: E402
    ConfigError,
    parse_overrides,
)

HELP = __doc__


def main(argv: list[str] | None = None) -> int:
    argv = start_cli(argv, HELP)
    if argv is None:
        return 0
    from data_modules.errors import CorpusError
    from data_modules.shards import ShardError
    from fair_lightning.experiment import audit

    try:
        _, pairs = parse_overrides(argv)
        ckpts = [v for k, v in pairs if k == "ckpt"]
        if not ckpts:
            raise ConfigError("missing ckpt=<path to a .ckpt file>")
        out = audit(Path(ckpts[0]), [(k, v) for k, v in pairs if k != "ckpt"])
    except (ConfigError, ShardError, CorpusError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"audit dir: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
