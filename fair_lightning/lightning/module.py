"""The LightningModule: task training plus an optional adversary.

Per batch with an adversary (manual optimization, in the manner of Lightning's GAN example;
the algorithm is `fair_lightning.steps`, shared with the benchmark's plain loop):
  1. forward the scorer once -> score and h;
  2. `k_disc` adversary steps on h.detach() (face discriminator D or attribute adversary A);
  3. one main step on task loss + lambda * the objective's term, with the adversary frozen.
An objective with `joint_step` (GRL) makes steps 2-3 one step through a gradient-reversal
layer. The adversary (`models.adversaries`) and the objective (`models.objectives`) are
built from the config by name and used only through their interfaces. Without an adversary,
Lightning's automatic optimization trains the task alone.

`trainer.global_step` counts optimizer steps: it grows by `optimizer_steps_per_batch`
(k_disc + 1 alternating, 2 joint, 1 without adversary) per batch. Config values
`trainer.max_steps` and `trainer.checkpoint_every_n_batches` are in batches;
`fair_lightning.experiment.build_trainer` converts them. `trained_batches` counts batches, and checkpoints keep it.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanAbsoluteError, MeanMetric, MetricCollection, PearsonCorrCoef, R2Score
from torchmetrics.classification import BinaryAUROC

from data_modules.batch import Batch
from fair_lightning.config import renamed_group
from fair_lightning.models import MultimodalScorer
from fair_lightning.models.adversaries import ADVERSARIES, AdversaryOutput
from fair_lightning.models.erasure import ErasedHead
from fair_lightning.models.objectives import OBJECTIVES, TASK_LOSSES
from fair_lightning.steps import training_step_for


def dann_weight(progress: float) -> float:
    """DANN warm-up (Ganin et al. 2016): 2 / (1 + exp(-10 p)) - 1, from 0 to ~1."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class RegressionMetrics(MetricCollection):
    def __init__(self, prefix: str):
        super().__init__({"mae": MeanAbsoluteError(), "pearson": PearsonCorrCoef(),
                          "r2": R2Score()}, prefix=prefix)


class LightningEngine:
    """The module as the training step's engine (`fair_lightning.steps`): Lightning's
    backward, clipping (`configure_gradient_clipping`), optimizer toggling and logging; the
    task alone is Lightning's automatic optimization, which steps, clips and schedules."""

    def __init__(self, module: L.LightningModule):
        self.m = module

    def optimizers(self):
        return self.m.optimizers()

    def adversary_weight(self) -> float:
        return self.m.adversary_weight()

    def backward(self, loss: torch.Tensor) -> None:
        self.m.manual_backward(loss)

    def clip_and_step(self, opt) -> None:
        self.m.configure_gradient_clipping(opt)
        opt.step()

    def toggled(self, opt):
        return self.m.toggled_optimizer(opt)

    def log(self, values: dict, batch_size: int) -> None:
        self.m.log_dict(values, batch_size=batch_size)

    def automatic(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def lap(self, name: str) -> None:
        pass


class FairScorerModule(L.LightningModule):
    def __init__(self, model: DictConfig | dict, adversary: DictConfig | dict,
                 optim: DictConfig | dict, *, text_dim: int, audio_dim: int,
                 max_epochs: int = 1, erasure: DictConfig | dict | None = None,
                 seed: int = 0):
        super().__init__()
        # plain containers: checkpoints then load with torch's weights_only=True
        model, adversary, optim = (
            OmegaConf.to_container(c, resolve=True) if isinstance(c, DictConfig) else dict(c)
            for c in (model, adversary, optim))
        if isinstance(erasure, DictConfig):
            erasure = OmegaConf.to_container(erasure, resolve=True)
        adversary = renamed_group("adversary", adversary)  # a checkpoint's older names
        self.save_hyperparameters()
        m = OmegaConf.create(model)
        self.adv_cfg = OmegaConf.create(adversary)
        self.optim_cfg = OmegaConf.create(optim)
        self.max_epochs = max_epochs
        self.task_loss = TASK_LOSSES[self.optim_cfg.loss]
        self.scorer = MultimodalScorer(
            text_dim=text_dim, audio_dim=audio_dim, hidden_dim=m.hidden_dim,
            fused_dim=m.fused_dim, dropout=m.dropout, audio_encoder=m.audio_encoder,
            video_channels=m.video_channels)
        adversary_cls = ADVERSARIES[self.adv_cfg.method]
        self.adversary = adversary_cls.from_config(m, self.adv_cfg) if adversary_cls else None
        self.objective = (OBJECTIVES[self.adv_cfg.objective].from_config(m, self.adv_cfg)
                          if self.adversary is not None else None)
        # the erasure stage (fitted after training by `lightning.erasure_stage.ErasureStage`)
        e = erasure or {}
        self.erased_head = (ErasedHead(m.fused_dim, head_dims=e["head_dims"],
                                       weight_decay=self.optim_cfg.weight_decay,
                                       residual=e["residual"], rank=e["rank"],
                                       fit_on=e["fit_on"], seed=seed)
                            if e.get("enabled") else None)
        self.erasure_proxy = e.get("proxy", "face")
        self.step_strategy = training_step_for(self.adversary, self.objective,
                                               self.adv_cfg.k_disc)
        # alternating steps need manual optimization; the task alone is Lightning's own loop
        self.automatic_optimization = self.adversary is None
        self._trained_batches = 0
        self._pending_resume: dict | None = None  # set by on_load_checkpoint, used in fit
        # ModuleDict keys may not shadow nn.Module attributes such as `train`
        stages = ("train", "val", "test")
        self.task_metrics = torch.nn.ModuleDict({
            f"{s}_": RegressionMetrics(prefix=f"{s}/") for s in stages})
        self.merit_pearson = torch.nn.ModuleDict({f"{s}_": PearsonCorrCoef() for s in stages})
        self.d_auc = torch.nn.ModuleDict({f"{s}_": BinaryAUROC() for s in stages})
        self.d_acc = torch.nn.ModuleDict({f"{s}_": MeanMetric() for s in stages})

    # ------------------------------------------------------------------ bookkeeping
    @property
    def trained_batches(self) -> int:
        """Training batches this model has stepped on (on this rank), resumes included."""
        return self._trained_batches

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.step_strategy.optimizer_steps

    def adversary_parameters(self):
        return [p for p in self.adversary.parameters() if p.requires_grad]

    def adversary_weight(self) -> float:
        """lambda now. Zero during `warmup_epochs` (the adversary learns alone first, so the
        main network is never rewarded for fooling an adversary that knows nothing); then
        constant, or DANN's warm-up over the remaining training progress p in [0, 1]."""
        warm = self.adv_cfg.warmup_epochs
        if self.current_epoch < warm:
            return 0.0
        w = self.adv_cfg.weight
        if self.adv_cfg.weight_schedule == "constant":
            return w
        t = self.trainer
        # estimated_stepping_batches counts batches here (it ignores our extra optimizer
        # steps), except when max_steps, which we set in optimizer steps, is what stops
        total = (t.max_steps / self.optimizer_steps_per_batch if t.max_steps and t.max_steps > 0
                 else t.estimated_stepping_batches)
        per_epoch = t.num_training_batches if math.isfinite(t.num_training_batches) else 0
        start = warm * per_epoch
        done = self.trained_batches - start
        return w * dann_weight(min(max(done / max(total - start, 1), 0.0), 1.0))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from fair_lightning.lightning.resume import RESUME_KEY
        from fair_lightning.ops.runtime import gather_objects

        checkpoint["trained_batches"] = self._trained_batches
        # every rank saves (Lightning writes rank 0's dict): gather what differs by rank
        checkpoint[RESUME_KEY] = {"ranks": gather_objects(self._resume_state())}

    def _resume_state(self) -> dict:
        from fair_lightning.lightning.resume import metric_states, rng_state

        state = {"rng": rng_state(),
                 "train_metrics": metric_states(torch.nn.ModuleList(
                     [self.task_metrics["train_"], self.d_auc["train_"], self.d_acc["train_"]]))}
        if self.adversary is not None:
            state["adversary"] = self.adversary.memory_state()
            state["objective"] = self.objective.memory_state()
        # BatchNorm running statistics differ by DDP rank (each updates them on its own
        # batch after DDP broadcasts rank 0's), and the checkpoint holds rank 0's only
        state["buffers"] = {k: b.detach().clone() for k, b in self._model_buffers()}
        return state

    def _model_buffers(self):
        return [(k, b) for k, b in self.named_buffers()
                if k.startswith(("scorer.", "adversary."))]

    def _apply_resume_state(self) -> None:
        """Restore this rank's saved state, just before the first batch after a resume:
        after Lightning's own restore and sanity check, where the run that saved it went
        on from."""
        from lightning.fabric.utilities.apply_func import move_data_to_device

        from fair_lightning.lightning.resume import load_metric_states, set_rng_state

        saved, self._pending_resume = self._pending_resume, None
        ranks = saved["ranks"]
        if len(ranks) != self.trainer.world_size:
            raise RuntimeError(f"the checkpoint was written by {len(ranks)} processes, this run "
                               f"has {self.trainer.world_size}: it cannot continue exactly")
        state = ranks[self.global_rank]
        set_rng_state(state["rng"])
        load_metric_states(torch.nn.ModuleList(
            [self.task_metrics["train_"], self.d_auc["train_"], self.d_acc["train_"]]),
            move_data_to_device(state["train_metrics"], self.device))
        with torch.no_grad():
            for k, b in self._model_buffers():
                b.copy_(state["buffers"][k])
        if self.adversary is not None:
            self.adversary.load_memory_state(state["adversary"])
            self.objective.load_memory_state(move_data_to_device(state["objective"],
                                                                 self.device))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._pending_resume is not None:
            self._apply_resume_state()

    def on_test_start(self) -> None:
        self._pending_resume = None  # testing a checkpoint restores its weights only

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from fair_lightning.lightning.resume import RESUME_KEY

        self._pending_resume = checkpoint.get(RESUME_KEY)
        # older checkpoints lack the counter
        self._trained_batches = checkpoint.get(
            "trained_batches", checkpoint.get("global_step", 0) // self.optimizer_steps_per_batch)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, Batch):
            return batch.to(device)
        if isinstance(batch, tuple) and batch and isinstance(batch[0], Batch):  # scoring's
            return (batch[0].to(device), *batch[1:])
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def forward(self, batch: Batch):
        return self.outputs(batch)

    def outputs(self, batch: Batch):
        """The scorer's output as the run scores it: after the erasure stage, the score of
        the refitted head; the erased h at full width (`reps["erased"]`), the directions the
        head reads (`reps["head"]`, when it reads a few); and the score itself as a
        one-column representation (`reps["score"]`, the audit's floor)."""
        out = self.scorer(batch)
        if self.erased_head is not None and self.erased_head.fitted:
            z = self.face_proxy(batch) if self.erased_head.needs_proxy else None
            erased, rep, out.score = self.erased_head(out.h, z)
            out.reps["erased"] = erased
            if self.erased_head.head_dims:
                out.reps["head"] = rep
        out.reps["score"] = out.score[:, None]
        return out

    def face_proxy(self, batch: Batch) -> torch.Tensor:
        """The label-free proxy of gender and ethnicity: the adversary's face embedding."""
        return self.adversary.embed(batch)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int):
        return self.step_strategy(self, batch, LightningEngine(self))

    def batch_done(self, batch: Batch, score: torch.Tensor) -> None:
        self.task_metrics["train_"].update(score.detach(), batch.label)
        self._trained_batches += 1

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        # one setting, `optim.grad_clip`, for Lightning's automatic steps and our manual ones
        if self.optim_cfg.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim_cfg.grad_clip,
                                gradient_clip_algorithm="norm")

    def track(self, adv: AdversaryOutput, stage: str) -> None:
        if adv.logits is not None:  # a matching adversary: D's accuracy and AUC
            self.d_auc[f"{stage}_"].update(adv.logits, adv.target.long())
            self.d_acc[f"{stage}_"].update(((adv.logits > 0).float() == adv.target).float().mean())

    def on_train_epoch_end(self):
        self.log_dict(self.task_metrics["train_"].compute())
        self.task_metrics["train_"].reset()
        self._log_d("train")
        if not self.automatic_optimization:  # Lightning steps schedulers in automatic only
            scheds = self.lr_schedulers()
            for s in scheds if isinstance(scheds, list) else [scheds] if scheds else []:
                s.step()

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch, stage: str):
        out = self.outputs(batch)
        n = len(batch)
        self.log(f"{stage}/loss", self.task_loss(out.score, batch.label), batch_size=n,
                 sync_dist=True)
        self.task_metrics[f"{stage}_"].update(out.score, batch.label)
        known = torch.isfinite(batch.merit)
        if known.any():
            self.merit_pearson[f"{stage}_"].update(out.score[known], batch.merit[known])
        if self.adversary is not None:
            obs = self.adversary.observe(batch, stage)
            self.track(self.adversary(out.h, obs), stage)
            self.adversary.remember(batch, stage)
            self.objective.eval_update(self.adversary, self.objective.representation(out),
                                       batch, obs)
        return {"score": out.score}

    def _eval_epoch_end(self, stage: str):
        self.log_dict(self.task_metrics[f"{stage}_"].compute(), sync_dist=True)
        self.task_metrics[f"{stage}_"].reset()
        if self.merit_pearson[f"{stage}_"].update_count:
            self.log(f"{stage}/pearson_merit", self.merit_pearson[f"{stage}_"].compute(), sync_dist=True)
        self.merit_pearson[f"{stage}_"].reset()
        self._log_d(stage)
        if self.objective is not None:
            for name, value in self.objective.eval_compute().items():
                self.log(f"adv/{stage}_{name}", value, sync_dist=True)

    def _log_d(self, stage: str):
        if self.d_acc[f"{stage}_"].update_count:
            self.log(f"adv/{stage}_d_acc", self.d_acc[f"{stage}_"].compute(), sync_dist=True)
            self.log(f"adv/{stage}_d_auc", self.d_auc[f"{stage}_"].compute(), sync_dist=True)
        self.d_acc[f"{stage}_"].reset()
        self.d_auc[f"{stage}_"].reset()

    def validation_step(self, batch: Batch, batch_idx: int):
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch: Batch, batch_idx: int):
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Scoring new clips (`fair-predict`): the score the run tests with (after the
        erasure stage, the refitted head's). `batch`: a Batch, or (Batch, the people by
        name) as the scoring loaders give it."""
        batch, people = batch if isinstance(batch, tuple) else (batch, batch.identity.tolist())
        return {"clip_id": list(batch.clip_id), "person": [str(p) for p in people],
                "score": self.outputs(batch).score.detach().float().cpu()}

    @torch.no_grad()
    def representations(self, batch: Batch) -> dict[str, torch.Tensor]:
        """What the audit attacks: the scorer's layers and, with a face adversary, the face
        proxy it uses (`proxy`: a proxy that does not carry an attribute cannot remove it)."""
        reps = self.outputs(batch).reps
        if self.adversary is not None and hasattr(self.adversary, "embed"):
            reps["proxy"] = self.face_proxy(batch)
        return reps

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        o = self.optim_cfg
        main = torch.optim.AdamW(self.scorer.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        opts = [main]
        if self.adversary is not None:
            opts.append(torch.optim.Adam(self.adversary_parameters(), lr=self.adv_cfg.lr))
        if o.scheduler == "cosine":
            scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.max_epochs, 1))
                      for opt in opts]
            return opts, scheds
        return opts
