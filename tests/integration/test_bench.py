"""The benchmark's plain loop is the computation the Trainer runs: the overhead ratio
compares like with like."""

from __future__ import annotations

import copy

import pytest
import torch

from fair_lightning.bench_train import _prepare, plain_epochs, trainer_epochs, verdict
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("exp", ["baseline", "adversarial"])
def test_the_plain_loop_makes_the_trainers_updates(tmp_path, exp):
    ov = tiny_overrides(tmp_path, **{"model.face_encoder": "cnn", "adversary.warmup_epochs": "0",
                                     "trainer.log_every_n_steps": "1"})
    cfg, dm, module = _prepare(exp, ov)
    twin = copy.deepcopy(module)
    before = copy.deepcopy(module.state_dict())
    torch.manual_seed(0)
    trainer_epochs(cfg, dm, module, 1)
    torch.manual_seed(0)
    plain_epochs(twin, dm.train_dataloader(), 1)
    a, b = module.state_dict(), twin.state_dict()
    assert any(not torch.equal(a[k], before[k]) for k in a if k.startswith("scorer."))
    differ = [k for k in a if k.startswith(("scorer.", "adversary.")) and
              not torch.allclose(a[k].float(), b[k].float(), atol=1e-6)]
    assert not differ, differ[:5]


def test_verdicts_name_the_goal_and_whether_it_is_met():
    assert verdict("overhead/adversarial", 0.95) == ">= 0.9: met"
    assert verdict("adversary_cost/adversarial", 1.7) == "<= 1.5: NOT met"
    assert verdict("growth/epoch_exponent", 1.0) == ""
