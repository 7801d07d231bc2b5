"""Upload offline W&B runs to the server, each as one run however often it was resumed.

    python -m fair_lightning.cli.sync <run dir> [<run dir> ...] [--dry-run]
    make sync RUN=<run dir>

Every start of a run writes its own `wandb/offline-run-<time>-<id>` folder with the run's
one id (kept in run.json), and an audit or a sweep's trials write theirs under their own
directories. All the folders found under the given directories go to one `wandb sync`
call: W&B uploads the folders of one id one after the other in order of start time, into
that one run (a resumed run's steps continue; a step logged again after a resume is not
written twice). Syncing a later folder alone, in a separate call, is what replaced an
earlier upload in older W&B versions: always pass the whole run directory. `--dry-run`
lists what would be uploaded and sends nothing. Needs a W&B login (`wandb login`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fair_lightning.ops.runtime import start_cli

HELP = __doc__


def offline_folders(paths: list[Path]) -> list[Path]:
    """Every W&B offline run folder under `paths`, oldest start first."""
    found = {p.resolve() for root in paths for p in Path(root).rglob("offline-run-*")
             if p.is_dir() and p.parent.name == "wandb"}
    # offline-run-YYYYMMDD_HHMMSS-<id>: the name sorts by start time
    return sorted(found, key=lambda p: (p.name.split("-")[2], str(p)))


def sync_command(paths: list[Path], dry_run: bool = False) -> list[str]:
    from fair_lightning.ops.runtime import wandb_command

    folders = offline_folders(paths)
    if not folders:
        raise ValueError(f"no W&B offline run (wandb/offline-run-*) under "
                         f"{', '.join(map(str, paths))}")
    return [wandb_command(), "sync", *(["--dry-run"] if dry_run else []),
            *map(str, folders)]


def main(argv: list[str] | None = None) -> int:
    argv = start_cli(argv, HELP)
    if argv is None:
        return 0
    dry_run = "--dry-run" in argv
    paths = [Path(a) for a in argv if a != "--dry-run"]
    try:
        if not paths:
            raise ValueError("give one or more run directories")
        if missing := [str(p) for p in paths if not p.is_dir()]:
            raise ValueError(f"not a directory: {', '.join(missing)}")
        cmd = sync_command(paths, dry_run)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(cmd) - 2 - dry_run} offline run folder(s): {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
