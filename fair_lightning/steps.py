"""What one training batch does, as a strategy: task only, alternating, or joint.

The LightningModule and the benchmark's plain PyTorch loop (`make bench`) both call the
same strategy; only the engine differs, so the benchmark compares the Trainer against this
very code, not a copy of it. The engine is what a loop supplies: its optimizers, backward,
gradient clipping and stepping, optimizer toggling, logging and the weight lambda.

The model (`FairScorerModule`) is used through `scorer`, `task_loss`, `adversary`,
`objective`, `adv_cfg.k_disc`, `track(adv, stage)` and `batch_done(batch, score)`.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch


class StepEngine(Protocol):
    def optimizers(self) -> list: ...
    def adversary_weight(self) -> float: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def clip_and_step(self, opt) -> None: ...
    def toggled(self, opt) -> contextlib.AbstractContextManager: ...
    def log(self, values: dict, batch_size: int) -> None: ...
    def automatic(self, loss: torch.Tensor) -> torch.Tensor | None: ...
    def lap(self, name: str) -> None: ...


def step(engine: StepEngine, opt, loss: torch.Tensor) -> None:
    opt.zero_grad()
    engine.backward(loss)
    engine.clip_and_step(opt)


class TaskStep:
    """No adversary: the task loss alone, stepped by the engine's automatic optimization."""

    optimizer_steps = 1

    def __call__(self, m, batch, engine: StepEngine) -> torch.Tensor | None:
        out = m.scorer(batch)
        task = m.task_loss(out.score, batch.label)
        engine.lap("scorer forward")
        engine.log({"train/loss": task}, len(batch))
        m.batch_done(batch, out.score)
        loss = engine.automatic(task)
        engine.lap("main backward and step")
        return loss


class AlternatingStep:
    """Forward the scorer once; `k_disc` adversary steps on h.detach() (fresh observations
    each); then one main step on task + lambda * the objective's term, adversary frozen."""

    def __init__(self, k_disc: int):
        self.k_disc = k_disc
        self.optimizer_steps = k_disc + 1

    def __call__(self, m, batch, engine: StepEngine) -> None:
        opt_main, opt_adv = engine.optimizers()
        out = m.scorer(batch)
        task = m.task_loss(out.score, batch.label)
        lam = engine.adversary_weight()
        h = out.h.detach()
        engine.lap("scorer forward")
        with engine.toggled(opt_adv):
            for _ in range(self.k_disc):
                obs = m.adversary.observe(batch, "train")
                adv = m.adversary(h, obs)
                m.track(adv, "train")
                step(engine, opt_adv, adv.loss)
        engine.lap(f"adversary: {self.k_disc} steps")
        with engine.toggled(opt_main):
            term = m.objective.term(m.adversary, m.objective.representation(out), batch,
                                    obs.detach())
            engine.lap("adversarial term")
            step(engine, opt_main, task + lam * term)
        engine.log({"train/loss": task, "adv/loss": adv.loss, "adv/main_term": term,
                    "adv/weight": lam}, len(batch))
        m.adversary.remember(batch, "train")
        m.batch_done(batch, out.score)
        engine.lap("main backward and step")


class JointStep:
    """One step for both networks: the objective's joint loss reaches h reversed (GRL)."""

    optimizer_steps = 2

    def __call__(self, m, batch, engine: StepEngine) -> None:
        opts = engine.optimizers()
        out = m.scorer(batch)
        task = m.task_loss(out.score, batch.label)
        lam = engine.adversary_weight()
        adv = m.objective.joint_loss(m.adversary, out.h, m.adversary.observe(batch, "train"),
                                     lam)
        m.track(adv, "train")
        engine.lap("scorer forward and adversary")
        for opt in opts:
            opt.zero_grad()
        engine.backward(task + adv.loss)
        for opt in opts:
            engine.clip_and_step(opt)
        engine.log({"train/loss": task, "adv/loss": adv.loss, "adv/weight": lam}, len(batch))
        m.adversary.remember(batch, "train")
        m.batch_done(batch, out.score)
        engine.lap("main backward and step")


def training_step_for(adversary, objective, k_disc: int):
    """The strategy a model's adversary and objective call for."""
    if adversary is None:
        return TaskStep()
    return JointStep() if objective.joint_step else AlternatingStep(k_disc)
