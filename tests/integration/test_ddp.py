"""A 2-process DDP run on CPU (gloo), compared with a single-process run on the same data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _hsic_rank(rank, world, init_file, out_dir):
    from fair_lightning.models.objectives import DependenceObjective, global_rows

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        # uneven ranks: 3 rows on rank 0, 5 on rank 1
        x = torch.arange(8 * 2, dtype=torch.float).view(8, 2)[[slice(0, 3), slice(3, 8)][rank]]
        x.requires_grad_(True)
        rows = global_rows(x)
        rows.sum().backward()
        torch.manual_seed(0)
        h, f = torch.randn(12, 8), torch.randn(12, 4)
        mine = slice(0, 6) if rank == 0 else slice(6, 12)
        obj = DependenceObjective(h_dim=8, queue_size=20).train()
        hl = h[mine].clone().requires_grad_(True)
        term = obj.dependence(hl, f[mine], torch.arange(12)[mine])
        term.backward()
        torch.save({"rows": rows.detach(), "x_grad": x.grad, "term": term.detach(),
                    "h_grad": hl.grad / world,  # DDP averages gradients over ranks
                    "queue": obj.queue}, Path(out_dir) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_dependence_term_under_ddp_matches_one_process_on_the_global_batch(tmp_path):
    """With 2 gloo ranks holding parts of a batch, the hsic term is estimated on the whole
    batch, its DDP-averaged gradient equals one process's on the whole batch, and the queue
    holds every rank's rows."""
    from fair_lightning.models.objectives import DependenceObjective

    mp.spawn(_hsic_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r = [torch.load(tmp_path / f"r{i}.pt") for i in range(2)]
    full = torch.arange(16, dtype=torch.float).view(8, 2)
    for i in range(2):
        assert torch.equal(r[i]["rows"], full)  # rank order, uneven counts
        assert torch.equal(r[i]["x_grad"], torch.ones_like(r[i]["x_grad"]))  # own rows only
    torch.manual_seed(0)
    h, f = torch.randn(12, 8), torch.randn(12, 4)
    one = DependenceObjective(h_dim=8, queue_size=20).train()
    hg = h.clone().requires_grad_(True)
    term = one.dependence(hg, f, torch.arange(12))
    term.backward()
    ddp_grad = torch.cat([r[0]["h_grad"], r[1]["h_grad"]])
    assert torch.allclose(ddp_grad, hg.grad, atol=1e-6)
    assert hg.grad.abs().sum() > 0
    # one estimate on 12 rows, scaled by rows / local batch (6), as the gradient needs
    for i in range(2):
        assert torch.allclose(r[i]["term"] / 2, term.detach(), atol=1e-6)
    for i in range(2):
        assert torch.equal(r[i]["queue"], torch.cat([h, f, torch.arange(12.0)[:, None]], 1))


def _train(tmp_path, cache, devices, exp="adversarial"):
    # 80 people: every split then has more shard chunks than ranks (litdata gives whole
    # chunks to ranks; a rank without one has an empty loader)
    ov = dict(tiny_overrides(tmp_path / f"d{devices}", **{"data.cache_dir": str(cache),
                                                          "data.synthetic.num_identities": "80",
                                                          "trainer.devices": str(devices),
                                                          "trainer.max_epochs": "2"}))
    env = {k: v for k, v in os.environ.items() if k != "FAIR_LIGHTNING_RUN_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "fair_lightning.cli.train", f"experiment={exp}",
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
              "probe/video/ethnicity/kernel/n_eval"):
        assert ddp[k] == single[k], k
    assert ddp["fair/gender/n/0"] + ddp["fair/gender/n/1"] == \
        single["fair/gender/n/0"] + single["fair/gender/n/1"]
    # each rank sees half the batches
    assert ddp["train/batches"] < single["train/batches"]
