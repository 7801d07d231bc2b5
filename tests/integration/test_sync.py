"""`make sync`: every offline folder of a resumed run goes to one `wandb sync`, oldest first."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# two starts of one run (the second resumes it), then an audit of it: what W&B writes
WRITE_RUNS = """
import sys, time, wandb
root = sys.argv[1]
for run_id, where, steps in (("abc12345", "", range(0, 5)), ("abc12345", "", range(3, 8)),
                             ("aud00001", "/audit-1", range(1))):
    r = wandb.init(mode="offline", id=run_id, resume="allow", project="p",
                   dir=root + where)
    for s in steps:
        r.log({"x": float(s)}, step=s)
    r.finish()
    time.sleep(1.1)  # the folder name's start time has one-second resolution
"""


def test_sync_sends_every_start_of_a_run_in_one_call_oldest_first(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT)}
    env.pop("WANDB_API_KEY", None)
    run_dir = tmp_path / "run"
    (run_dir / "audit-1").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", WRITE_RUNS, str(run_dir)], env=env, check=True,
                   timeout=300)
    folders = sorted(run_dir.rglob("offline-run-*"))
    assert len(folders) == 3
    # W&B's own dry run, through the user's command: no upload, no login needed
    r = subprocess.run(["make", "-s", "sync", f"RUN={run_dir}", "ARGS=--dry-run",
                        f"VENV={Path(sys.executable).parent.parent}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 offline run folder(s)" in r.stdout
    sent = r.stdout.splitlines()[0].split(" sync --dry-run ")[1].split()
    starts = [Path(p).name.split("-")[2] for p in sent]
    assert starts == sorted(starts) and len(set(sent)) == 3
    assert sent[0].endswith("abc12345") and sent[1].endswith("abc12345")  # resumed: 2 starts
    assert "Would sync 3 run(s)" in r.stdout + r.stderr


def test_sync_without_offline_runs_is_a_clear_error(tmp_path, capsys):
    from fair_lightning.cli.sync import main

    assert main([str(tmp_path)]) == 2
    assert f"no W&B offline run (wandb/offline-run-*) under {tmp_path}" in capsys.readouterr().err
    assert main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
