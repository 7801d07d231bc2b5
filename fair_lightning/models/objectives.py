"""What the main network minimises so that an adversary fails (the adversarial term).

Each objective reads the adversary only through the `Adversary` interface, so any objective
works with any adversary:

* `ConfusionObjective`: the adversary's outputs pushed to "can't tell" (D -> 0.5, A ->
  uniform), the paper's recipe.
* `MinimaxObjective`: minus the adversary's own loss.
* `ReversalObjective` (GRL, Ganin & Lempitsky 2015): no separate term; one joint step in
  which the adversary's loss reaches h through a gradient-reversal layer (`joint_step`).
* `DependenceObjective` (HSIC): the kernel dependence of h on the adversary's
  `dependence_target` (face embeddings, or one-hot attributes), across people.

`OBJECTIVES` maps `adversary.objective` to them. Adding one: a class here, its name in
`OBJECTIVES` (which `adversary.objective` accepts), and a test.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.utilities.distributed import gather_all_tensors

from fair_lightning.models.adversaries import Adversary, AdversaryOutput, grad_reverse
from fair_lightning.models.dependence import kernel_dependence

# the task losses, by the name `optim.loss` gives
TASK_LOSSES = {"mse": nn.functional.mse_loss, "mae": nn.functional.l1_loss,
               "huber": nn.functional.smooth_l1_loss}


class Objective(nn.Module):
    """An adversarial term. With `joint_step`, the module makes one step on the task loss
    plus `joint_loss` instead of alternating adversary steps and a main step."""

    joint_step = False

    @classmethod
    def from_config(cls, model, adversary) -> Objective:
        return cls()

    def representation(self, out) -> torch.Tensor:
        """What the term reads of the scorer's output (`ScorerOutput`): h."""
        return out.h

    def term(self, adversary: Adversary, h: torch.Tensor, batch, obs) -> torch.Tensor:
        """What the main network minimises (times lambda), the adversary frozen."""
        raise NotImplementedError

    def eval_update(self, adversary: Adversary, h: torch.Tensor, batch, obs) -> None:
        """Called on every val/test batch."""

    def eval_compute(self) -> dict[str, torch.Tensor]:
        """Metrics over the val/test split, logged as `adv/<stage>_<name>`; resets."""
        return {}

    def memory_state(self) -> dict:
        """What the objective keeps between steps besides parameters (a queue)."""
        return {}

    def load_memory_state(self, state: dict) -> None:
        """Restore `memory_state`."""


class ConfusionObjective(Objective):
    def term(self, adversary, h, batch, obs):
        return adversary.confusion(h, obs)


class MinimaxObjective(Objective):
    def term(self, adversary, h, batch, obs):
        return -adversary(h, obs).loss


class ReversalObjective(Objective):
    joint_step = True

    def joint_loss(self, adversary: Adversary, h: torch.Tensor, obs,
                   weight: float) -> AdversaryOutput:
        """The adversary's loss on h, whose gradient reaches h times -weight."""
        return adversary(grad_reverse(h, weight), obs)


def global_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of x from every DDP rank, in rank order; this rank's rows keep their
    gradient, the others arrive detached. Ranks may hold different row counts. Outside
    DDP, x itself. Every rank must call it (a collective)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(gather_all_tensors(x))


def occurrence_index(ids: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows carry the same id (0 = its first row)."""
    order = torch.argsort(ids, stable=True)
    srt = ids[order]
    pos = torch.arange(len(ids), device=ids.device)
    starts = torch.ones_like(srt, dtype=torch.bool)
    starts[1:] = srt[1:] != srt[:-1]
    occ = torch.empty_like(pos)
    occ[order] = pos - torch.cummax(torch.where(starts, pos, 0), 0).values
    return occ


def dependence_rows(h: torch.Tensor, target: torch.Tensor,
                    identity: torch.Tensor) -> torch.Tensor:
    """[h | target | person id] rows, in float32: exact ids, and a stable kernel under
    bf16 autocast."""
    return torch.cat([h.float(), target.float(), identity[:, None].float()], 1)


class DependenceObjective(Objective):
    """Kernel dependence (CKA-normalised HSIC) of h on the adversary's dependence target,
    across *people*: estimated over the global batch (all DDP ranks) plus a queue of
    `queue_size` recent detached rows, keeping one row per person.

    With several `layers` (h and the branch outputs `text`, `audio`, `video`) the term is the
    sum of each layer's dependence on the same target: pressure where an attribute enters
    (a voice branch that reads gender hands it to h), not only where it arrives. The layers'
    rows travel as one concatenated row, so they share the queue and the one-row-per-person
    selection.

    Two clips of one person share their face embedding and much of h (merit is mostly a
    person's), so their pairs would make the term remove who the person is, merit with it,
    not only what their face shows. 32 rows alone give so noisy an estimate that following
    it shakes h. Only this rank's rows get gradients; scaling by rows / local batch keeps
    their gradient, and so lambda's meaning, independent of the queue length, and makes a
    DDP step (which averages ranks' gradients) match a single process on the global batch.
    """

    def __init__(self, h_dim: int, queue_size: int = 0, h_kernel: str = "gaussian",
                 measure: str = "cka", eps: float = 0.01,
                 layers: dict[str, int] | None = None):
        super().__init__()
        self.layers = dict(layers or {"fused": h_dim})  # name -> width, in row order
        self.h_dim = sum(self.layers.values())
        self.queue_size = queue_size
        self.h_kernel = h_kernel
        self.measure = measure
        self.eps = eps
        self.queue: torch.Tensor | None = None  # recent [h | target | identity] rows
        self._eval_rows: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, model, adversary) -> DependenceObjective:
        # checkpoints from before a key existed load with its old behaviour
        widths = {"fused": model.fused_dim, "text": model.hidden_dim,
                  "audio": model.hidden_dim, "video": model.hidden_dim}
        names = adversary.get("dependence_layers", ["fused"])
        return cls(model.fused_dim, adversary.dependence_queue, adversary.dependence_h_kernel,
                   adversary.get("dependence_measure", "cka"), adversary.get("nocco_eps", 0.01),
                   layers={n: widths[n] for n in names})

    def representation(self, out) -> torch.Tensor:
        if list(self.layers) == ["fused"]:
            return out.h
        return torch.cat([out.reps[n] for n in self.layers], 1)

    def term(self, adversary, h, batch, obs):
        target = adversary.dependence_target(obs)[: h.shape[0]]
        return self.dependence(h, target, batch.identity)

    def dependence(self, h: torch.Tensor, target: torch.Tensor,
                   identity: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        rows = dependence_rows(h, target, identity)
        if self.training:
            rows = global_rows(rows)
            new = rows.detach()
            if self.queue is not None:
                rows = torch.cat([rows, self.queue])
        rows = rows[occurrence_index(rows[:, -1].long()) == 0]
        term = self._rows_dependence(rows) * (rows.shape[0] / n)
        if self.training and self.queue_size > 0:
            self.queue = (new if self.queue is None
                          else torch.cat([new, self.queue])[: self.queue_size])
        return term

    def memory_state(self) -> dict:
        return {"queue": self.queue}

    def load_memory_state(self, state: dict) -> None:
        self.queue = state["queue"]

    def _rows_dependence(self, rows: torch.Tensor) -> torch.Tensor:
        return sum(self._layer_dependence(rows).values())

    def _layer_dependence(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        target, out, start = rows[:, self.h_dim:-1], {}, 0
        for name, width in self.layers.items():
            out[name] = kernel_dependence(rows[:, start:start + width], target, self.h_kernel,
                                          self.measure, self.eps)
            start += width
        return out

    def eval_update(self, adversary, h, batch, obs):
        target = adversary.dependence_target(obs)[: h.shape[0]]
        self._eval_rows.append(dependence_rows(h, target, batch.identity))

    def eval_compute(self):
        rows, self._eval_rows = self._eval_rows, []
        if not rows:
            return {}
        # the whole split, gathered from every rank: a low-noise estimate. As in training,
        # across people: the mean over slices holding each person's k-th clip
        rows = global_rows(torch.cat(rows))
        occ = occurrence_index(rows[:, -1].long())
        est = [self._layer_dependence(r)
               for r in (rows[occ == k] for k in range(int(occ.max()) + 1)) if len(r) >= 4]
        if not est:
            return {}
        per_layer = {n: torch.stack([e[n] for e in est]).mean() for n in self.layers}
        out = {"dependence": sum(per_layer.values())}  # the term's own value, as in training
        if len(self.layers) > 1:
            out.update({f"dependence_{n}": v for n, v in per_layer.items()})
        return out


OBJECTIVES: dict[str, type[Objective]] = {
    "confusion": ConfusionObjective, "minimax": MinimaxObjective, "grl": ReversalObjective,
    "dependence": DependenceObjective}
