"""Score clips with a trained checkpoint: scores and invite decisions, as the run made them.

    python -m fair_lightning.cli.predict ckpt=<path.ckpt> [data=<clips.csv | ChaLearn dir>]
        [split=test|val|train|all] [out=<scores.csv>] [threshold=<score>] [key=value ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from fair_lightning.ops.runtime import quiet_warnings, set_offline_env, start_cli

set_offline_env()


HELP = """usage: fair-predict ckpt=PATH.ckpt [data=CSV|DIR] [split=SPLIT] [out=FILE.csv]
                    [threshold=SCORE] [key=value ...]

Scores clips with the model of a checkpoint (any of a run's: last, best, periodic, an
audit's erased.ckpt, a copy kept elsewhere), erasure stage and refitted head included, on
the run's GPU when there is one. Features are made with the run's own preprocessing
settings (the config the checkpoint carries) and cached as training caches them.

  ckpt=PATH           the checkpoint
  data=CLIPS.csv      a manifest: clip,person,transcript (docs/data.md); a label, gender or
                      ethnicity column is never read
  data=DIR            a ChaLearn First Impressions folder
  (no data)           the run's own data source
  split=SPLIT         test (default for the run's data and ChaLearn), val, train, or all
                      (default for a manifest)
  out=FILE.csv        default: <run dir>/scores-<time>.csv (beside a checkpoint kept
                      elsewhere); an existing file is refused
  threshold=SCORE     invite at a fixed score instead of the run's own rule
  key=value           e.g. data.batch_size=256 trainer.accelerator=cpu

Writes FILE.csv (clip_id, person, score, invite) and FILE.json: the checkpoint's sha256,
the data, the clips that could not be read (counted by reason, each named), the decision
rule (the score cut-off the run's test split used, or fairness.threshold) and the scoring
throughput. Clips that cannot be read are skipped and reported; the rest are scored.
Errors (a missing or unreadable checkpoint, features that differ from the model's, a
manifest without transcripts) print one `error:` line and exit 2 with nothing written.
The last line printed is `scores: <path>`.
"""


def main(argv: list[str] | None = None) -> int:
    argv = start_cli(argv, HELP)
    if argv is None:
        return 0
    quiet_warnings()
    from fair_lightning.cli import checkpoint_command, user_errors
    from fair_lightning.predict import predict

    try:
        args, overrides = checkpoint_command(argv, ("data", "split", "out", "threshold"))
        out = predict(Path(args["ckpt"]), args.get("data"), args.get("split"), args.get("out"),
                      overrides, args.get("threshold"))
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"scores: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
