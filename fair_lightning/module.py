"""The LightningModule: task training plus an optional adversary, with manual optimization.

Per batch (Lightning's GAN-example style, algorithm in `training_step`):
  1. forward the scorer once -> score and h;
  2. `k_disc` adversary steps on h.detach() (face discriminator D or attribute adversary A);
  3. one main step on task loss + lambda * adversarial term, with the adversary frozen.
With objective `grl` steps 2-3 collapse into one step through a gradient-reversal layer.
With objective `hsic` the main step's term is not D's output but the kernel dependence of h
on the face embeddings (indirect) or on the attributes (label); D, if any, keeps training
and its AUC monitors whether faces can still be matched to h.

`trainer.global_step` counts optimizer steps (Lightning, manual optimization): it grows by
`optimizer_steps_per_batch` (k_disc + 1 with an alternating adversary, 2 with grl, 1 without)
per batch. Config values `trainer.max_steps` and `trainer.checkpoint_every_n_batches` are in
batches; `train.py` converts them.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanAbsoluteError, MeanMetric, MetricCollection, PearsonCorrCoef, R2Score
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities.distributed import gather_all_tensors

from data_modules.batch import Batch
from fair_lightning.models import (
    AttributeAdversary,
    FaceBank,
    FaceEncoder,
    FaceMatchDiscriminator,
    MultimodalScorer,
    grad_reverse,
    kernel_dependence,
    sample_pairs,
)

TASK_LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.smooth_l1_loss}


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


def dann_weight(progress: float) -> float:
    """DANN warm-up (Ganin et al. 2016): 2 / (1 + exp(-10 p)) - 1, from 0 to ~1."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over rows whose target is known (>= 0); 0 when none is."""
    known = target >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], target[known])


def confusion_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the uniform distribution: minimal when A can't tell classes."""
    return -F.log_softmax(logits, dim=-1).mean(-1).mean()


def balanced_bce(logits: torch.Tensor, target: torch.Tensor,
                 is_positive: torch.Tensor | None = None) -> torch.Tensor:
    """BCE where positive and negative pairs weigh the same, whatever their counts.

    `is_positive` tells the pair kinds apart when `target` is not the pair label (the
    confusion objective's target is 0.5 everywhere).
    """
    pos = target > 0.5 if is_positive is None else is_positive.bool()
    w = torch.where(pos, 0.5 / pos.sum().clamp(min=1), 0.5 / (~pos).sum().clamp(min=1))
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum()


class RegressionMetrics(MetricCollection):
    def __init__(self, prefix: str):
        super().__init__({"mae": MeanAbsoluteError(), "pearson": PearsonCorrCoef(),
                          "r2": R2Score()}, prefix=prefix)


class FairScorerModule(L.LightningModule):
    def __init__(self, model: DictConfig | dict, adversary: DictConfig | dict,
                 optim: DictConfig | dict, *, text_dim: int, audio_dim: int,
                 max_epochs: int = 1):
        super().__init__()
        # plain containers: checkpoints then load with torch's weights_only=True
        model, adversary, optim = (
            OmegaConf.to_container(c, resolve=True) if isinstance(c, DictConfig) else dict(c)
            for c in (model, adversary, optim))
        self.save_hyperparameters()
        self.automatic_optimization = False
        m = OmegaConf.create(model)
        self.adv_cfg = OmegaConf.create(adversary)
        self.optim_cfg = OmegaConf.create(optim)
        self.method = self.adv_cfg.method
        self.objective = self.adv_cfg.objective
        self.max_epochs = max_epochs
        self.task_loss = TASK_LOSSES[self.optim_cfg.loss]
        self.scorer = MultimodalScorer(
            text_dim=text_dim, audio_dim=audio_dim, hidden_dim=m.hidden_dim,
            fused_dim=m.fused_dim, dropout=m.dropout, audio_encoder=m.audio_encoder,
            video_channels=m.video_channels)
        if self.method == "indirect":
            if m.face_encoder == "frozen":
                self.face_encoder = FaceEncoder.from_checkpoint(m.face_encoder_checkpoint,
                                                                m.face_dim)
            elif m.face_encoder == "identity":  # weights: `train.py` pretrains, or a checkpoint
                self.face_encoder = FaceEncoder(m.face_dim).freeze()
            else:
                self.face_encoder = FaceEncoder(m.face_dim)
            self.discriminator = FaceMatchDiscriminator(m.fused_dim, m.face_dim,
                                                        self.adv_cfg.hidden_dim,
                                                        heads=self.adv_cfg.heads)
            # one bank per stage: validation must not find training clips, nor the reverse
            self.face_banks = {s: FaceBank(seed=i) for i, s in enumerate(("train", "val", "test"))}
        elif self.method == "label":
            self.attr_adversary = AttributeAdversary(m.fused_dim, self.adv_cfg.hidden_dim)
        self._queue: torch.Tensor | None = None  # hsic: recent [h | target | identity] rows
        self._eval_rows: list[torch.Tensor] = []  # hsic: [h | target | identity] rows of val/test
        # ModuleDict keys may not shadow nn.Module attributes such as `train`
        stages = ("train", "val", "test")
        self.task_metrics = torch.nn.ModuleDict({
            f"{s}_": RegressionMetrics(prefix=f"{s}/") for s in stages})
        self.merit_pearson = torch.nn.ModuleDict({f"{s}_": PearsonCorrCoef() for s in stages})
        self.d_auc = torch.nn.ModuleDict({f"{s}_": BinaryAUROC() for s in stages})
        self.d_acc = torch.nn.ModuleDict({f"{s}_": MeanMetric() for s in stages})

    # ------------------------------------------------------------------ bookkeeping
    @property
    def has_adversary(self) -> bool:
        return self.method != "none"

    @property
    def optimizer_steps_per_batch(self) -> int:
        if not self.has_adversary:
            return 1
        return 2 if self.objective == "grl" else self.adv_cfg.k_disc + 1

    def adversary_parameters(self):
        mods = ([self.face_encoder, self.discriminator] if self.method == "indirect"
                else [self.attr_adversary])
        return [p for mod in mods for p in mod.parameters() if p.requires_grad]

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
        done = t.fit_loop.epoch_loop._batches_that_stepped - start
        return w * dann_weight(min(max(done / max(total - start, 1), 0.0), 1.0))

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(
            batch, device, dataloader_idx)

    def forward(self, batch: Batch):
        return self.scorer(batch)

    # ------------------------------------------------------------------ adversary terms
    def _face_pairs(self, batch: Batch, stage: str):
        """D's pairs and the face frames they index ([B + n, K, 3, H, W]: the batch clips'
        own faces, then, with `positive_faces: other_clip`, banked faces of another clip of
        the same person, which are the only positives)."""
        own = self.adv_cfg.positive_faces == "own_clip"
        h_idx, f_idx, target = sample_pairs(batch.identity, self.adv_cfg.negatives_per_positive,
                                            own_positives=own)
        faces = batch.faces
        if not own:
            rows, banked = self.face_banks[stage].lookup(batch.identity, batch.clip_id)
            if rows.numel():
                n, b = rows.numel(), len(batch)
                h_idx = torch.cat([rows, h_idx])
                f_idx = torch.cat([torch.arange(b, b + n, device=rows.device), f_idx])
                target = torch.cat([torch.ones(n, device=target.device), target])
                faces = torch.cat([faces, banked])
        return (h_idx, f_idx, target), faces

    def _remember_faces(self, batch: Batch, stage: str):
        if self.method == "indirect" and self.adv_cfg.positive_faces == "other_clip":
            self.face_banks[stage].add(batch.identity, batch.clip_id, batch.faces)

    def _adversary_loss(self, h: torch.Tensor, batch: Batch, pairs=None, faces=None,
                        stage: str = "train"):
        """The adversary's own loss on h (what D/A minimise), logging its accuracy."""
        if self.method == "indirect":
            h_idx, f_idx, target = pairs
            logits = self.discriminator.head_logits(h[h_idx], faces[f_idx])
            self._track_d(logits.detach().mean(0), target, stage)
            return torch.stack([balanced_bce(lg, target) for lg in logits]).mean()
        g_logits, e_logits = self.attr_adversary(h)
        s = batch.sensitive  # label baseline only: the one mode allowed to read attributes
        return masked_ce(g_logits, s.gender) + masked_ce(e_logits, s.ethnicity)

    def _main_adversarial_term(self, h: torch.Tensor, batch: Batch, pairs, faces):
        """What the main network minimises so that the adversary fails."""
        if self.objective == "hsic":
            return self._dependence_term(h, self._dependence_target(batch, faces)[: h.shape[0]],
                                         batch.identity)
        if self.method == "indirect":
            h_idx, f_idx, target = pairs
            logits = self.discriminator.head_logits(h[h_idx], faces[f_idx])
            if self.objective == "confusion":
                half = torch.full_like(target, 0.5)
                return torch.stack([balanced_bce(lg, half, is_positive=target)
                                    for lg in logits]).mean()
            return -torch.stack([balanced_bce(lg, target) for lg in logits]).mean()  # minimax
        g_logits, e_logits = self.attr_adversary(h)
        if self.objective == "confusion":
            return confusion_to_uniform(g_logits) + confusion_to_uniform(e_logits)
        s = batch.sensitive
        return -(masked_ce(g_logits, s.gender) + masked_ce(e_logits, s.ethnicity))

    def _dependence_term(self, h: torch.Tensor, target: torch.Tensor,
                         identity: torch.Tensor) -> torch.Tensor:
        """Kernel dependence of h on `target` across *people*: estimated over the global
        batch (all DDP ranks) plus a queue of recent detached rows, keeping one row per
        person. Two clips of one person share their face embedding and much of h (merit
        is mostly a person's), so their pairs would make the term remove who the person
        is, merit with it, not only what their face shows. 32 rows alone give so noisy an
        estimate that following it shakes h. Only this rank's rows get gradients; scaling
        by rows / local batch keeps their gradient, and so lambda's meaning, independent of
        the queue length, and makes a DDP step (which averages ranks' gradients) match a
        single process on the global batch."""
        n = h.shape[0]
        rows = self._dependence_rows(h, target, identity)
        if self.training:
            rows = global_rows(rows)
            new = rows.detach()
            if self._queue is not None:
                rows = torch.cat([rows, self._queue])
        rows = rows[occurrence_index(rows[:, -1].long()) == 0]
        term = self._rows_dependence(rows) * (rows.shape[0] / n)
        if self.training and self.adv_cfg.dependence_queue > 0:
            keep = self.adv_cfg.dependence_queue
            self._queue = new if self._queue is None else torch.cat([new, self._queue])[:keep]
        return term

    @staticmethod
    def _dependence_rows(h, target, identity) -> torch.Tensor:
        """[h | target | person id] rows, in float32: exact ids, and a stable kernel under
        bf16 autocast."""
        return torch.cat([h.float(), target.float(), identity[:, None].float()], 1)

    def _rows_dependence(self, rows: torch.Tensor) -> torch.Tensor:
        dh = self.hparams.model["fused_dim"]
        return kernel_dependence(rows[:, :dh], rows[:, dh:-1], self.adv_cfg.hsic_h_kernel)

    def _dependence_target(self, batch: Batch, faces):
        """What h must become independent of: the learned face embeddings (indirect), or
        the one-hot attributes (label baseline; unknown values get an all-zero row)."""
        if self.method == "indirect":
            return faces.detach()
        s = batch.sensitive
        return torch.cat([F.one_hot(s.gender.clamp(min=0), 2) * (s.gender >= 0)[:, None],
                          F.one_hot(s.ethnicity.clamp(min=0), 3) * (s.ethnicity >= 0)[:, None]],
                         dim=1).float()

    def _track_d(self, logits, target, stage):
        self.d_auc[f"{stage}_"].update(logits, target.long())
        self.d_acc[f"{stage}_"].update(((logits > 0).float() == target).float().mean())

    def _clip_and_step(self, opt):
        if self.optim_cfg.grad_clip > 0:
            self.clip_gradients(opt, gradient_clip_val=self.optim_cfg.grad_clip,
                                gradient_clip_algorithm="norm")
        opt.step()

    def _step(self, opt, loss):
        opt.zero_grad()
        self.manual_backward(loss)
        self._clip_and_step(opt)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int):
        opts = self.optimizers()
        opt_main, opt_adv = (opts, None) if not self.has_adversary else opts
        out = self.scorer(batch)
        task = self.task_loss(out.score, batch.label)
        n = len(batch)

        if not self.has_adversary:
            self._step(opt_main, task)
            self.log("train/loss", task, batch_size=n)
        elif self.objective == "grl":
            lam = self.adversary_weight()
            pairs = faces = None
            if self.method == "indirect":
                pairs, raw = self._face_pairs(batch, "train")
                faces = self.face_encoder(raw)
            adv = self._adversary_loss(grad_reverse(out.h, lam), batch, pairs, faces)
            for opt in (opt_main, opt_adv):
                opt.zero_grad()
            self.manual_backward(task + adv)
            for opt in (opt_main, opt_adv):
                self._clip_and_step(opt)
            self.log_dict({"train/loss": task, "adv/loss": adv, "adv/weight": lam},
                          batch_size=n)
        else:
            lam = self.adversary_weight()
            # 1) k_disc adversary steps on the detached representation
            h = out.h.detach()
            self.toggle_optimizer(opt_adv)
            pairs = faces = None
            for _ in range(self.adv_cfg.k_disc):
                if self.method == "indirect":
                    pairs, raw = self._face_pairs(batch, "train")
                    faces = self.face_encoder(raw)
                adv = self._adversary_loss(h, batch, pairs, faces)
                self._step(opt_adv, adv)
            self.untoggle_optimizer(opt_adv)
            # 2) one main step: task + lambda * adversarial term, adversary frozen
            self.toggle_optimizer(opt_main)
            faces = faces.detach() if faces is not None else None
            term = self._main_adversarial_term(out.h, batch, pairs, faces)
            self._step(opt_main, task + lam * term)
            self.untoggle_optimizer(opt_main)
            self.log_dict({"train/loss": task, "adv/loss": adv, "adv/main_term": term,
                           "adv/weight": lam}, batch_size=n)
        self._remember_faces(batch, "train")
        self.task_metrics["train_"].update(out.score.detach(), batch.label)

    def on_train_epoch_end(self):
        self.log_dict(self.task_metrics["train_"].compute())
        self.task_metrics["train_"].reset()
        self._log_d("train")
        scheds = self.lr_schedulers()
        for s in scheds if isinstance(scheds, list) else [scheds] if scheds else []:
            s.step()

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch, stage: str):
        out = self.scorer(batch)
        n = len(batch)
        self.log(f"{stage}/loss", self.task_loss(out.score, batch.label), batch_size=n,
                 sync_dist=True)
        self.task_metrics[f"{stage}_"].update(out.score, batch.label)
        known = torch.isfinite(batch.merit)
        if known.any():
            self.merit_pearson[f"{stage}_"].update(out.score[known], batch.merit[known])
        faces = None
        if self.method == "indirect":
            pairs, raw = self._face_pairs(batch, stage)
            faces = self.face_encoder(raw)
            self._adversary_loss(out.h, batch, pairs, faces, stage)
            self._remember_faces(batch, stage)
        if self.objective == "hsic":
            self._eval_rows.append(self._dependence_rows(
                out.h, self._dependence_target(batch, faces)[:n], batch.identity))
        return {"score": out.score}

    def _eval_epoch_end(self, stage: str):
        self.log_dict(self.task_metrics[f"{stage}_"].compute(), sync_dist=True)
        self.task_metrics[f"{stage}_"].reset()
        if self.merit_pearson[f"{stage}_"].update_count:
            self.log(f"{stage}/pearson_merit", self.merit_pearson[f"{stage}_"].compute(), sync_dist=True)
        self.merit_pearson[f"{stage}_"].reset()
        self._log_d(stage)
        rows, self._eval_rows = self._eval_rows, []
        if self.objective == "hsic" and rows:
            # the whole split, gathered from every rank: a low-noise estimate. As in
            # training, across people: the mean over slices holding each person's k-th clip
            rows = global_rows(torch.cat(rows))
            occ = occurrence_index(rows[:, -1].long())
            est = [self._rows_dependence(r) for r in (rows[occ == k] for k in range(int(occ.max()) + 1))
                   if len(r) >= 4]
            if est:
                self.log(f"adv/{stage}_hsic", torch.stack(est).mean(), sync_dist=True)

    def _log_d(self, stage: str):
        if self.method == "indirect" and self.d_acc[f"{stage}_"].update_count:
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

    @torch.no_grad()
    def representations(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.scorer(batch).reps

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        o = self.optim_cfg
        main = torch.optim.AdamW(self.scorer.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        opts = [main]
        if self.has_adversary:
            opts.append(torch.optim.Adam(self.adversary_parameters(), lr=self.adv_cfg.lr))
        if o.scheduler == "cosine":
            scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.max_epochs, 1))
                      for opt in opts]
            return opts, scheds
        return opts
