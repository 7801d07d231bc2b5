"""Preprocess a raw corpus (ChaLearn or a CSV manifest) into cached shards.

    python -m fair_lightning.cli.preprocess data.source=chalearn data.chalearn.root=DIR [key=value ...]

Training runs the same step on first use; running it alone lets a cluster job start from
ready shards, and shows the report first. Interrupted, it resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from fair_lightning.ops.runtime import set_offline_env, start_cli

set_offline_env()

from fair_lightning.config import ConfigError, config_from_argv  # noqa: E402

HELP = """usage: python -m fair_lightning.cli.preprocess data.source=SOURCE [key=value ...]

Decodes every clip of a raw corpus (PyAV, a few evenly spaced frames and the audio track),
crops the face, computes audio features, embeds the transcript, and writes the shards that
training streams. Each clip is cached on its own: a killed run resumes where it stopped.

  data.source=chalearn data.chalearn.root=DIR   ChaLearn First Impressions V2 download
  data.source=manifest data.manifest.path=CSV   your own clips (docs/data.md)
  data.preprocess.workers=N                     clip-parallel processes (0 = all cores)
  data.preprocess.detector=haar|dlib            face detector
  any other data.* key of fair_lightning/experiments/base.yaml

Writes report.md / report.json / skipped.csv next to the cached clips (their path is
printed): clips used and skipped by reason, and seconds per stage. The last line printed is
`shards: <path>`.
"""

log = logging.getLogger("fair_lightning")


def main(argv: list[str] | None = None) -> int:
    argv = start_cli(argv, HELP)
    if argv is None:
        return 0
    from data_modules.errors import CorpusError
    from data_modules.sources import build_shards

    try:
        cfg = config_from_argv(argv)
        if cfg.data.source == "synthetic":
            raise ConfigError("data.source=synthetic needs no preprocessing (make train builds "
                              "it); use chalearn or manifest")
        root = build_shards(cfg.data)
    except (ConfigError, CorpusError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((root / "meta.json").read_text())
    report = Path(meta["preprocess_report"]).with_suffix(".md")
    print(report.read_text() if report.is_file() else "")
    print(f"clips per split: {meta['clips']}; people per split: {meta['identities']}")
    print(f"report: {report}")
    print(f"shards: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
