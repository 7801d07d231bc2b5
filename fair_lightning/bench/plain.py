"""The plain PyTorch loop `make bench` compares the Trainer with: the same training step
(`fair_lightning.steps`) driven without Lightning."""

from __future__ import annotations

import contextlib
import time

import torch

from fair_lightning.steps import step


class PlainEngine:
    """A plain PyTorch loop's engine: `loss.backward()`, `clip_grad_norm_`, toggling as
    Lightning's `toggled_optimizer` does (only the stepped optimizer's parameters require
    grad), a constant lambda, no logging; `parts` adds up seconds by part of the step."""

    def __init__(self, opts: list, params: list[list], clip: float, weight: float,
                 parts: dict | None = None):
        self.opts, self.params, self.clip, self.weight = opts, params, clip, weight
        self.parts = {} if parts is None else parts
        self.mark = time.perf_counter()

    def optimizers(self) -> list:
        return self.opts

    def adversary_weight(self) -> float:
        return self.weight

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_and_step(self, opt) -> None:
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params[self.opts.index(opt)], self.clip)
        opt.step()

    @contextlib.contextmanager
    def toggled(self, opt):
        others = [p for i, ps in enumerate(self.params) if self.opts[i] is not opt for p in ps]
        saved = [p.requires_grad for p in others]
        for p in others:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, r in zip(others, saved, strict=True):
                p.requires_grad_(r)

    def log(self, values: dict, batch_size: int) -> None:
        pass

    def automatic(self, loss: torch.Tensor) -> None:
        step(self, self.opts[0], loss)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - self.mark
        self.mark = now
