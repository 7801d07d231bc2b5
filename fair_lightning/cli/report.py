"""Compare finished runs, or report a sweep's Pareto front.

    python -m fair_lightning.cli.report RUN_DIR ... [--out DIR]
    python -m fair_lightning.cli.report --sweep runs/sweeps/<name>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fair_lightning.audit.report import compare, pareto_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fair_lightning.cli.report",
                                description="Compare finished runs: leakage tables by group of runs "
                                            "and by run (every audited layer, DP ratio, r with "
                                            "merit, kept variance; markdown, CSV) and a "
                                            "task-metric-against-leakage plot.")
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each with summary.json), "
                   "or with --sweep one sweep directory (runs/sweeps/<name>)")
    p.add_argument("--sweep", action="store_true",
                   help="a sweep's Pareto report: front, every trial, the selected one")
    p.add_argument("--out", type=Path, default=Path("runs/comparison"), help="output directory")
    p.add_argument("--metric", default="test/pearson_merit", help="task metric on the y axis")
    p.add_argument("--leakage", default="h",
                   help="leakage metric on the x axis (default h: gender in h at full width, "
                   "clip level; the erased h where the run has an erasure stage)")
    p.add_argument("--allow-mixed-data", action="store_true",
                   help="compare runs made on different data (refused otherwise)")
    args = p.parse_args(argv)
    try:
        if args.sweep:
            paths = pareto_report(args.runs[0], None if args.out == Path("runs/comparison")
                                  else args.out)
        else:
            paths = compare(args.runs, args.out, args.metric, args.leakage,
                            allow_mixed_data=args.allow_mixed_data)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
