"""The benchmark's plain loop runs the module's own training step (no copy of it)."""

from __future__ import annotations

import copy

import pytest
import torch

from fair_lightning.bench.measure import _prepare, plain_epochs
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("exp", ["baseline", "adversarial"])
def test_the_plain_loop_trains_through_the_modules_strategy(tmp_path, exp, monkeypatch):
    ov = tiny_overrides(tmp_path, **{"model.face_encoder": "cnn", "adversary.warmup_epochs": "0"})
    cfg, dm, module = _prepare(exp, ov)
    before = copy.deepcopy(module.state_dict())
    calls = []
    real = type(module.step_strategy).__call__
    monkeypatch.setattr(type(module.step_strategy), "__call__",
                        lambda self, *a: calls.append(1) or real(self, *a))
    parts: dict = {}
    plain_epochs(module, dm.train_dataloader(), 1, parts)
    after = module.state_dict()
    assert len(calls) == sum(1 for _ in dm.train_dataloader()) == module.trained_batches
    moved = {k.split(".")[0] for k in after
             if after[k].is_floating_point() and not torch.equal(after[k], before[k])}
    assert "scorer" in moved
    assert ("adversary" in moved) == (exp == "adversarial")
    assert "loading" in parts and "main backward and step" in parts
    if exp == "adversarial":
        assert f"adversary: {cfg.adversary.k_disc} steps" in parts


def test_the_scoring_bench_measures_the_commands_path(tmp_path):
    """`make bench BENCH=predict`: clips/s per split and batch size through fair-predict's
    own function, on a run's cached clips, written as JSON and markdown."""
    import json

    from fair_lightning.cli.bench import main as bench_main
    from fair_lightning.config import load_config
    from fair_lightning.experiment import run

    run_dir = run(load_config("adversarial", tiny_overrides(tmp_path,
                                                            **{"probe.enabled": "false"})))
    out = tmp_path / "bench"
    assert bench_main(["predict", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"),
                       "--splits", "test", "val", "--batch-sizes", "4", "16", "--repeats", "2",
                       "--out", str(out)]) == 0
    r = json.loads((out / "predict.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(x["split"], x["batch_size"]) for x in r["runs"]] == [
        ("test", 4), ("test", 16), ("val", 4), ("val", 16)]
    for x in r["runs"]:
        assert x["clips"] == summary[f"data/clips/{x['split']}"] and x["clips_per_s"] > 0
        assert len(x["clips_per_s_all"]) == 2 and x["device"] == "cpu"
    assert "| test | 16 |" in (out / "predict.md").read_text()
