"""The LightningModule: alternating steps, objectives, the label-free guard, step counting,
Lightning's own loop without an adversary."""

import copy

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from data_modules.batch import SensitiveAccessError
from data_modules.collate import collate_records, strip_sensitive
from data_modules.datamodule import InterviewDataModule
from data_modules.shards import write_shards
from fair_lightning.bench.plain import PlainEngine
from fair_lightning.config import load_config
from fair_lightning.lightning.module import FairScorerModule, dann_weight
from fair_lightning.models import kernel_dependence
from fair_lightning.models.objectives import occurrence_index
from tests.conftest import make_records


def _module(method="indirect", objective="confusion", k_disc=1, max_epochs=1, optim=(),
            **adv):
    cfg = load_config("baseline", [("adversary.method", method),
                                   ("adversary.objective", objective),
                                   ("adversary.k_disc", str(k_disc)),
                                   ("adversary.weight_schedule", "constant"), ("adversary.warmup_epochs", "0"),
                                   ("model.hidden_dim", "16"), ("model.fused_dim", "8"),
                                   ("model.face_dim", "8"), ("model.video_channels", "4"),
                                   *[(f"adversary.{k}", str(v)) for k, v in adv.items()],
                                   *[(f"optim.{k}", str(v)) for k, v in dict(optim).items()]])
    return FairScorerModule(cfg.model, cfg.adversary, cfg.optim, text_dim=384, audio_dim=8,
                            max_epochs=max_epochs)


class _Loader:
    """Fixed batches, as a train loader for `Trainer.fit`."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _loader(records, size=4):
    free = [strip_sensitive(r) for r in records]
    return _Loader([collate_records(free[i:i + size]) for i in range(0, len(free), size)])


def _trainer(tmp_path=None, **kw):
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=tmp_path is not None, default_root_dir=tmp_path,
                     limit_val_batches=0, **kw)


def _attach(module):
    # drive training_step by hand: Lightning's optimizer wrappers need a trainer
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    module.trainer = trainer
    trainer.strategy.setup_optimizers(trainer)
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None
    module.adversary_weight = lambda: 1.0
    return trainer


def _snapshot(mod):
    return {n: p.detach().clone() for n, p in mod.named_parameters()}


def _changed(before, mod):
    return {n for n, p in mod.named_parameters() if not torch.equal(before[n], p)}


@pytest.mark.parametrize("engine", ["lightning", "plain"])
@pytest.mark.parametrize("method,objective", [("indirect", "confusion"), ("label", "confusion"),
                                              ("indirect", "dependence"), ("label", "dependence")])
def test_alternating_steps_update_the_right_parameters(method, objective, engine, records):
    """Through the Trainer's engine and the benchmark's plain one alike: the same strategy
    steps the adversary alone, then the scorer alone."""
    torch.manual_seed(0)
    m = _module(method, objective=objective)
    batch = collate_records(records if method == "label"
                            else [strip_sensitive(r) for r in records])
    adv_mods = [m.adversary]
    if engine == "lightning":
        _attach(m)
        opt_main, opt_adv = m.optimizers()
        run = lambda: m.training_step(batch, 0)  # noqa: E731
    else:
        opts = m.configure_optimizers()
        opt_main, opt_adv = opts[0] if isinstance(opts, tuple) else opts
        plain = PlainEngine([opt_main, opt_adv], [list(m.scorer.parameters()),
                                                  m.adversary_parameters()],
                            clip=1.0, weight=1.0)
        run = lambda: m.step_strategy(m, batch, plain)  # noqa: E731
    m.train()
    calls = []
    real_main, real_adv = opt_main.step, opt_adv.step

    def spy(name, real):
        def step(*a, **k):
            # record which parameters move in this optimizer step
            before_s, before_a = _snapshot(m.scorer), [_snapshot(x) for x in adv_mods]
            out = real(*a, **k)
            calls.append((name, bool(_changed(before_s, m.scorer)),
                          any(_changed(b, x) for b, x in zip(before_a, adv_mods, strict=True))))
            return out
        return step

    opt_main.step, opt_adv.step = spy("main", real_main), spy("adv", real_adv)
    run()
    assert calls == [("adv", False, True), ("main", True, False)]
    assert all(p.requires_grad for p in m.scorer.parameters())  # toggling restored


def test_k_disc_adversary_steps_per_batch(records):
    m = _module("indirect", k_disc=3)
    _attach(m)
    assert m.optimizer_steps_per_batch == 4
    opt_main, opt_adv = m.optimizers()
    n = {"main": 0, "adv": 0}
    for name, opt in (("main", opt_main), ("adv", opt_adv)):
        real = opt.step
        opt.step = lambda *a, _r=real, _n=name, **k: (n.__setitem__(_n, n[_n] + 1), _r(*a, **k))[1]
    m.training_step(collate_records([strip_sensitive(r) for r in records]), 0)
    assert n == {"main": 1, "adv": 3}


def test_grl_single_step_updates_both(records):
    torch.manual_seed(0)
    m = _module("indirect", objective="grl")
    _attach(m)
    assert m.optimizer_steps_per_batch == 2
    s, d = _snapshot(m.scorer), _snapshot(m.adversary.discriminator)
    m.training_step(collate_records([strip_sensitive(r) for r in records]), 0)
    assert _changed(s, m.scorer) and _changed(d, m.adversary.discriminator)


def test_main_step_pushes_h_against_the_discriminator(records):
    """minimax: the main step's adversarial term is minus D's loss, confusion: BCE to 0.5."""
    torch.manual_seed(0)
    batch = collate_records([strip_sensitive(r) for r in records])
    for objective in ("minimax", "confusion"):
        m = _module("indirect", objective=objective)
        h = m.scorer(batch).h
        obs = m.adversary.observe(batch, "train")
        d_loss = m.adversary(h, obs).loss
        term = m.objective.term(m.adversary, h, batch, obs.detach())
        if objective == "minimax":
            assert torch.allclose(term, -d_loss)
        else:  # balanced BCE against 0.5 is at least log 2, reached when D outputs 0.5
            assert term >= torch.log(torch.tensor(2.0)) - 1e-6


def test_dependence_term_measures_h_against_fixed_targets(records):
    """dependence: the main term is the kernel dependence of h on the discriminator's face
    embeddings (indirect) or on the one-hot attributes (label); only h gets its gradient."""
    torch.manual_seed(0)
    free = collate_records([strip_sensitive(r) for r in records])
    m = _module("indirect", objective="dependence")
    h = m.scorer(free).h
    obs = m.adversary.observe(free, "train")
    faces = obs.faces
    term = m.objective.term(m.adversary, h, free, obs)
    one = occurrence_index(free.identity) == 0  # one row per person
    assert 0 < one.sum() < len(free)
    scale = one.sum() / len(free)
    assert torch.allclose(term, kernel_dependence(h[one], faces.detach()[one]) * scale)
    term.backward()
    assert all(p.grad is None for p in m.adversary.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.scorer.parameters())
    lab = _module("label", objective="dependence")
    full = collate_records(records)
    h = lab.scorer(full).h
    s = full.sensitive
    onehot = torch.cat([torch.nn.functional.one_hot(s.gender, 2),
                        torch.nn.functional.one_hot(s.ethnicity, 3)], 1).float()
    assert torch.allclose(lab.objective.term(lab.adversary, h, full,
                                             lab.adversary.observe(full, "train")),
                          kernel_dependence(h[one], onehot[one]) * scale)


def test_indirect_training_step_cannot_read_sensitive(records):
    """The label-free guard: a training step in indirect mode gets a batch whose
    attributes raise on access, and the module never needs them."""
    batch = collate_records([strip_sensitive(r) for r in records])
    # the dependence term on h and every branch reads the face proxy alone, too
    for m in (_module("indirect"),
              _module("indirect", "dependence", dependence_layers="[fused,text,audio,video]")):
        _attach(m)
        m.training_step(batch, 0)  # succeeds without the attributes
    with pytest.raises(SensitiveAccessError):
        _ = batch.sensitive
    # the label adversary, by contrast, needs them and fails loudly without
    lab = _module("label")
    _attach(lab)
    with pytest.raises(SensitiveAccessError):
        lab.training_step(batch, 0)


def test_training_step_batches_are_label_free_through_the_trainer(tmp_path):
    """End to end through Lightning: every batch the indirect training step receives lacks
    gender/ethnicity, while validation still reaches the fairness path."""
    for i, split in enumerate(("train", "val", "test")):
        write_shards(make_records(6, 2, seed=i, prefix=split[:2]), tmp_path / split)
    dm = InterviewDataModule(OmegaConf.create({"source": "synthetic", "batch_size": 4,
                                               "num_workers": 0}),
                             label_free=True, shard_root=tmp_path)
    m = _module("indirect")
    seen = []
    real = m.training_step

    def spy(batch, batch_idx):
        seen.append(batch.has_sensitive)
        return real(batch, batch_idx)

    m.training_step = spy
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(m, datamodule=dm)
    assert seen and not any(seen)


def test_max_steps_counts_batches(tmp_path):
    """Config max_steps is in batches; Lightning's global_step counts optimizer steps."""
    from fair_lightning.experiment import build_trainer

    for i, split in enumerate(("train", "val", "test")):
        write_shards(make_records(10, 2, seed=i, prefix=split[:2]), tmp_path / split)
    cfg = load_config("baseline", [("trainer.max_steps", "3"), ("trainer.max_epochs", "5"),
                                   ("adversary.k_disc", "2")])
    dm = InterviewDataModule(OmegaConf.create({"source": "synthetic", "batch_size": 4,
                                               "num_workers": 0}),
                             label_free=True, shard_root=tmp_path)
    m = _module("indirect", k_disc=2)
    trainer = build_trainer(cfg, tmp_path / "run", m)
    trainer.fit(m, datamodule=dm)
    assert m.trained_batches == 3
    assert trainer.global_step == 3 * 3


def test_occurrence_index_counts_earlier_rows_of_the_same_id():
    assert occurrence_index(torch.tensor([3, 1, 3, 3, 2, 1])).tolist() == [0, 0, 1, 2, 0, 1]


def test_dann_schedule():
    assert dann_weight(0.0) == 0.0
    assert 0.99 < dann_weight(1.0) < 1.0
    assert dann_weight(0.1) < dann_weight(0.5)


def test_adversary_weight_is_zero_during_warmup_then_ramps(tmp_path):
    """lambda = 0 while the adversary warms up, then DANN's ramp over the remaining batches."""
    from fair_lightning.experiment import build_trainer

    for i, split in enumerate(("train", "val", "test")):
        write_shards(make_records(8, 2, seed=i, prefix=split[:2]), tmp_path / split)
    cfg = load_config("baseline", [("trainer.max_epochs", "4")])
    dm = InterviewDataModule(OmegaConf.create({"source": "synthetic", "batch_size": 4,
                                               "num_workers": 0}),
                             label_free=True, shard_root=tmp_path)
    m = _module("indirect", warmup_epochs=2, weight_schedule="dann", weight=2.0)
    seen = []
    real = m.adversary_weight

    def spy():
        seen.append((m.current_epoch, real()))
        return seen[-1][1]

    m.adversary_weight = spy
    build_trainer(cfg, tmp_path / "run", m).fit(m, datamodule=dm)
    warm = [w for e, w in seen if e < 2]
    after = [w for e, w in seen if e >= 2]
    assert warm and all(w == 0.0 for w in warm)
    assert after == sorted(after) and 0 < after[-1] <= 2.0 and after[-1] > 1.5


def test_other_clip_positives_come_from_the_bank(records):
    """positive_faces=other_clip: a clip's own faces are never its positive; the positives
    are banked faces of another clip of the same person."""
    m = _module("indirect", positive_faces="other_clip")
    batch = collate_records([strip_sensitive(r) for r in records])
    (_, _, tgt), _ = m.adversary.pairs(batch, "train")
    assert len(tgt) and (tgt == 0).all()  # empty bank: negatives only
    m.adversary.remember(batch, "train")
    (h_idx, f_idx, tgt), raw = m.adversary.pairs(batch, "train")
    pos = tgt == 1
    assert pos.sum() == len(batch)  # every person in this batch has a second clip
    assert (f_idx[pos] >= len(batch)).all()
    for i, j in zip(h_idx[pos].tolist(), f_idx[pos].tolist(), strict=True):
        src = [k for k in range(len(batch)) if torch.allclose(raw[j], batch.faces[k], atol=1e-3)]
        assert len(src) == 1 and src[0] != i
        assert batch.identity[src[0]] == batch.identity[i]


def test_no_adversary_is_lightnings_automatic_loop(records):
    """method none needs no manual optimization: Lightning's own loop, clipping at
    `optim.grad_clip` and stepping the cosine schedule once per epoch, trains exactly like
    a plain PyTorch loop."""
    torch.manual_seed(0)
    m = _module("none", max_epochs=2, optim={"grad_clip": 0.05})
    assert m.automatic_optimization and m.optimizer_steps_per_batch == 1
    ref = copy.deepcopy(m).train()
    loader = _loader(records)
    torch.manual_seed(1)  # dropout draws the same in both
    trainer = _trainer(max_epochs=2)
    trainer.fit(m, train_dataloaders=loader)
    assert trainer.global_step == m.trained_batches == 2 * len(loader)

    torch.manual_seed(1)
    o = ref.optim_cfg
    opt = torch.optim.AdamW(ref.scorer.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    clipped = []
    for _ in range(2):
        for b in loader:
            loss = torch.nn.functional.mse_loss(ref.scorer(b).score, b.label)
            opt.zero_grad()
            loss.backward()
            clipped.append(torch.nn.utils.clip_grad_norm_(ref.scorer.parameters(), 0.05) > 0.05)
            opt.step()
        sched.step()
    assert any(clipped)  # the clip mattered
    for (name, p), q in zip(m.scorer.named_parameters(), ref.scorer.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    assert trainer.optimizers[0].param_groups[0]["lr"] == opt.param_groups[0]["lr"] < o.lr


def test_manual_steps_clip_at_grad_clip(records):
    m = _module("indirect", optim={"grad_clip": 0.01})
    _attach(m)
    opt_main, _ = m.optimizers()
    batch = collate_records([strip_sensitive(r) for r in records])
    (m.scorer(batch).score.sum() * 1e3).backward()
    m.configure_gradient_clipping(opt_main)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.scorer.parameters()
                                                 if p.grad is not None]))
    assert norm == pytest.approx(0.01, rel=1e-3)


def test_trained_batches_survive_checkpoints(records, tmp_path):
    """The module counts its training batches itself (global_step counts optimizer steps);
    checkpoints keep the count, loading and resuming restore it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    loader = _loader(records)
    m = _module("indirect", k_disc=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[ckpt])
    trainer.fit(m, train_dataloaders=loader)
    n = 2 * len(loader)
    assert m.trained_batches == n and trainer.global_step == 3 * n
    path = tmp_path / "last.ckpt"
    assert torch.load(path, weights_only=True)["trained_batches"] == n
    assert FairScorerModule.load_from_checkpoint(path).trained_batches == n
    again = _module("indirect", k_disc=2)
    _trainer(tmp_path, max_epochs=3).fit(again, train_dataloaders=loader, ckpt_path=path)
    assert again.trained_batches == n + len(loader)


def test_checkpoints_without_a_batch_count_take_it_from_the_step():
    """Older checkpoints have no batch count: it follows from Lightning's optimizer steps."""
    src = _module("indirect", k_disc=3)
    ckpt = {"state_dict": src.state_dict(), "global_step": 40}
    dst = _module("indirect", k_disc=3)
    dst.on_load_checkpoint(ckpt)
    assert dst.trained_batches == 10


def test_a_new_objective_is_one_class(records):
    """The module drives any `Objective` through its interface: the term gets h with its
    gradient and the adversary's observation detached, and is what the main step uses."""
    from fair_lightning.models import Objective

    class Spy(Objective):
        calls = []

        def term(self, adversary, h, batch, obs):
            self.calls.append((h.requires_grad, obs.faces.requires_grad))
            return h.pow(2).mean()

    m = _module("indirect")
    m.objective = Spy()
    _attach(m)
    logged = {}
    m.log_dict = lambda d, **k: logged.update(d)
    m.training_step(collate_records([strip_sensitive(r) for r in records]), 0)
    assert Spy.calls == [(True, False)]
    assert logged["adv/main_term"] > 0 and set(logged) == {
        "train/loss", "adv/loss", "adv/main_term", "adv/weight"}
