"""A 2-process DDP run on CPU (gloo), compared with a single-process run on the same data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def _train(tmp_path, cache, devices, exp="adversarial"):
    # 80 people: every split then has more shard chunks than ranks (litdata gives whole
    # chunks to ranks; a rank without one has an empty loader)
    ov = dict(tiny_overrides(tmp_path / f"d{devices}", **{"data.cache_dir": str(cache),
                                                          "data.synthetic.num_identities": "80",
                                                          "trainer.devices": str(devices),
                                                          "trainer.max_epochs": "2"}))
    env = {k: v for k, v in os.environ.items() if k != "FAIR_LIGHTNING_RUN_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "fair_lightning.train", f"experiment={exp}",
                        *[f"{k}={v}" for k, v in ov.items()]],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((Path(ov["output_dir"]) / "summary.json").read_text())


@pytest.mark.slow
def test_ddp_two_processes_matches_single_process(tmp_path):
    single = _train(tmp_path, tmp_path / "cache", 1)
    ddp = _train(tmp_path, tmp_path / "cache", 2)
    # probes see every clip exactly once after the gather, like a single process
    for k in ("probe/fused/gender/linear/n_eval", "probe/fused/gender/linear/n_fit",
              "probe/video/ethnicity/mlp/n_eval"):
        assert ddp[k] == single[k], k
    assert ddp["fair/gender/n/0"] + ddp["fair/gender/n/1"] == \
        single["fair/gender/n/0"] + single["fair/gender/n/1"]
    # each rank sees half the batches
    assert ddp["train/batches"] < single["train/batches"]
