"""The LightningModule: alternating steps, objectives, the label-free guard, step counting."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from data_modules.batch import SensitiveAccessError
from data_modules.collate import collate_records, strip_sensitive
from data_modules.datamodule import InterviewDataModule
from data_modules.shards import write_shards
from fair_lightning.config import load_config
from fair_lightning.models import kernel_dependence
from fair_lightning.module import FairScorerModule, dann_weight, occurrence_index
from tests.conftest import make_records


def _module(method="indirect", objective="confusion", k_disc=1, **adv):
    cfg = load_config("baseline", [("adversary.method", method),
                                   ("adversary.objective", objective),
                                   ("adversary.k_disc", str(k_disc)),
                                   ("adversary.weight_schedule", "constant"), ("adversary.warmup_epochs", "0"),
                                   ("model.hidden_dim", "16"), ("model.fused_dim", "8"),
                                   ("model.face_dim", "8"), ("model.video_channels", "4"),
                                   *[(f"adversary.{k}", str(v)) for k, v in adv.items()]])
    return FairScorerModule(cfg.model, cfg.adversary, cfg.optim, text_dim=384, audio_dim=8,
                            max_epochs=1)


def _attach(module):
    # drive training_step by hand: Lightning's optimizer wrappers need a trainer
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    module.trainer = trainer
    trainer.strategy._lightning_optimizers = []
    opts = module.configure_optimizers()
    opts = opts[0] if isinstance(opts, tuple) else opts
    trainer.strategy.optimizers = opts if isinstance(opts, list) else [opts]
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None
    module.adversary_weight = lambda: 1.0
    return trainer


def _snapshot(mod):
    return {n: p.detach().clone() for n, p in mod.named_parameters()}


def _changed(before, mod):
    return {n for n, p in mod.named_parameters() if not torch.equal(before[n], p)}


@pytest.mark.parametrize("method,objective", [("indirect", "confusion"), ("label", "confusion"),
                                              ("indirect", "hsic"), ("label", "hsic")])
def test_alternating_steps_update_the_right_parameters(method, objective, records):
    torch.manual_seed(0)
    m = _module(method, objective=objective)
    _attach(m)
    m.train()
    batch = collate_records(records if method == "label"
                            else [strip_sensitive(r) for r in records])
    adv_mods = ([m.face_encoder, m.discriminator] if method == "indirect" else [m.attr_adversary])
    opt_main, opt_adv = m.optimizers()
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
    m.training_step(batch, 0)
    assert calls == [("adv", False, True), ("main", True, False)]


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
    s, d = _snapshot(m.scorer), _snapshot(m.discriminator)
    m.training_step(collate_records([strip_sensitive(r) for r in records]), 0)
    assert _changed(s, m.scorer) and _changed(d, m.discriminator)


def test_main_step_pushes_h_against_the_discriminator(records):
    """minimax: the main step's adversarial term is minus D's loss, confusion: BCE to 0.5."""
    torch.manual_seed(0)
    batch = collate_records([strip_sensitive(r) for r in records])
    for objective in ("minimax", "confusion"):
        m = _module("indirect", objective=objective)
        h = m.scorer(batch).h
        pairs, raw = m._face_pairs(batch, "train")
        faces = m.face_encoder(raw)
        d_loss = m._adversary_loss(h, batch, pairs, faces)
        term = m._main_adversarial_term(h, batch, pairs, faces)
        if objective == "minimax":
            assert torch.allclose(term, -d_loss)
        else:  # balanced BCE against 0.5 is at least log 2, reached when D outputs 0.5
            assert term >= torch.log(torch.tensor(2.0)) - 1e-6


def test_hsic_term_measures_h_against_fixed_targets(records):
    """hsic: the main term is the kernel dependence of h on the discriminator's face
    embeddings (indirect) or on the one-hot attributes (label); only h gets its gradient."""
    torch.manual_seed(0)
    free = collate_records([strip_sensitive(r) for r in records])
    m = _module("indirect", objective="hsic")
    h = m.scorer(free).h
    faces = m.face_encoder(free.faces)
    term = m._main_adversarial_term(h, free, m._face_pairs(free, "train")[0], faces)
    one = occurrence_index(free.identity) == 0  # one row per person
    assert 0 < one.sum() < len(free)
    scale = one.sum() / len(free)
    assert torch.allclose(term, kernel_dependence(h[one], faces.detach()[one]) * scale)
    term.backward()
    assert all(p.grad is None for p in m.face_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.scorer.parameters())
    lab = _module("label", objective="hsic")
    full = collate_records(records)
    h = lab.scorer(full).h
    s = full.sensitive
    onehot = torch.cat([torch.nn.functional.one_hot(s.gender, 2),
                        torch.nn.functional.one_hot(s.ethnicity, 3)], 1).float()
    assert torch.allclose(lab._main_adversarial_term(h, full, None, None),
                          kernel_dependence(h[one], onehot[one]) * scale)


def test_indirect_training_step_cannot_read_sensitive(records):
    """The label-free guard: a training step in indirect mode gets a batch whose
    attributes raise on access, and the module never needs them."""
    m = _module("indirect")
    _attach(m)
    batch = collate_records([strip_sensitive(r) for r in records])
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
    from fair_lightning.train import build_trainer

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
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == 3
    assert trainer.global_step == 3 * 3


def test_occurrence_index_counts_earlier_rows_of_the_same_id():
    assert occurrence_index(torch.tensor([3, 1, 3, 3, 2, 1])).tolist() == [0, 0, 1, 2, 0, 1]


def test_dann_schedule():
    assert dann_weight(0.0) == 0.0
    assert 0.99 < dann_weight(1.0) < 1.0
    assert dann_weight(0.1) < dann_weight(0.5)


def test_adversary_weight_is_zero_during_warmup_then_ramps(tmp_path):
    """lambda = 0 while the adversary warms up, then DANN's ramp over the remaining batches."""
    from fair_lightning.train import build_trainer

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
    (_, _, tgt), _ = m._face_pairs(batch, "train")
    assert len(tgt) and (tgt == 0).all()  # empty bank: negatives only
    m._remember_faces(batch, "train")
    (h_idx, f_idx, tgt), raw = m._face_pairs(batch, "train")
    pos = tgt == 1
    assert pos.sum() == len(batch)  # every person in this batch has a second clip
    assert (f_idx[pos] >= len(batch)).all()
    for i, j in zip(h_idx[pos].tolist(), f_idx[pos].tolist(), strict=True):
        src = [k for k in range(len(batch)) if torch.allclose(raw[j], batch.faces[k], atol=1e-3)]
        assert len(src) == 1 and src[0] != i
        assert batch.identity[src[0]] == batch.identity[i]


def test_hsic_queue_adds_recent_rows(monkeypatch):
    """The dependence estimate uses the batch plus up to `dependence_queue` queued rows,
    only while training; the term is scaled by rows / batch."""
    import fair_lightning.module as module_mod

    m = _module("indirect", objective="hsic", dependence_queue=12)
    m.train()
    rows = []

    def fake(x, y, kernel):
        rows.append((x.shape[0], y.shape[0]))
        return torch.tensor(0.5)

    monkeypatch.setattr(module_mod, "kernel_dependence", fake)
    people = iter(range(100))
    terms = [m._dependence_term(torch.randn(5, 8), torch.randn(5, 3),
                                torch.tensor([next(people) for _ in range(5)]))
             for _ in range(4)]
    assert rows == [(5, 5), (10, 10), (15, 15), (17, 17)]  # queue capped at 12
    assert [round(float(t), 3) for t in terms] == [0.5, 1.0, 1.5, 1.7]
    m.eval()  # no queue outside training, and it is left as it was
    m._dependence_term(torch.randn(5, 8), torch.randn(5, 3), torch.arange(5))
    assert rows[-1] == (5, 5) and len(m._queue) == 12


def test_hsic_estimate_keeps_one_row_per_person(monkeypatch):
    """Two clips of one person would make the term remove identity; the batch's row of a
    person wins over queued ones, and the queue itself keeps every row."""
    import fair_lightning.module as module_mod

    m = _module("indirect", objective="hsic", dependence_queue=20).train()
    seen = []
    monkeypatch.setattr(module_mod, "kernel_dependence",
                        lambda x, y, kernel: seen.append((x, y)) or torch.tensor(0.0))
    first = torch.randn(4, 8)
    m._dependence_term(first, torch.randn(4, 3), torch.tensor([0, 1, 1, 2]))
    assert len(seen[-1][0]) == 3 and torch.equal(seen[-1][0], first[[0, 1, 3]])
    second = torch.randn(3, 8)
    m._dependence_term(second, torch.randn(3, 3), torch.tensor([2, 5, 6]))
    used = seen[-1][0]
    # batch rows (people 2, 5, 6), then queued people 0 and 1 (not 2, not 1 twice)
    assert torch.equal(used, torch.cat([second, first[[0, 1]]]))
    assert len(m._queue) == 7
