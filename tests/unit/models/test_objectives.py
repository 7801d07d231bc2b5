"""Each objective by what it asks of the main network, through the `Adversary` interface."""

import math

import pytest
import torch

import fair_lightning.models.objectives as objectives
from data_modules.collate import collate_records, strip_sensitive
from fair_lightning.config import ConfigError, load_config
from fair_lightning.models import (
    ADVERSARIES,
    OBJECTIVES,
    Adversary,
    AdversaryOutput,
    ConfusionObjective,
    DependenceObjective,
    FaceMatchAdversary,
    LabelAdversary,
    MinimaxObjective,
    ReversalObjective,
    kernel_dependence,
)
from fair_lightning.models.objectives import occurrence_index


class LinearAdversary(Adversary):
    """A stand-in adversary with a known loss: the objectives may use only the interface."""

    def __init__(self, dim=3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(1.0, dim + 1))

    def observe(self, batch, stage):
        return batch

    def forward(self, h, obs):
        return AdversaryOutput(((h * self.w).sum(1) - obs).pow(2).mean())

    def confusion(self, h, obs):
        return (h * self.w).sum(1).pow(2).mean()

    def dependence_target(self, obs):
        return obs[:, None]


def test_the_config_accepts_what_the_registries_hold(monkeypatch):
    """adversary.method and adversary.objective take their vocabulary from the registries:
    an entry added there is a valid config value, with no list to update elsewhere."""
    with pytest.raises(ConfigError, match="adversary.objective' must be .*grl.*, got 'mine'"):
        load_config("adversarial", [("adversary.objective", "mine")])
    monkeypatch.setitem(OBJECTIVES, "mine", ConfusionObjective)
    monkeypatch.setitem(ADVERSARIES, "mine_too", None)
    cfg = load_config("adversarial", [("adversary.objective", "mine")])
    assert cfg.adversary.objective == "mine"
    assert load_config("baseline", [("adversary.method", "mine_too")]).adversary.method == "mine_too"


def test_confusion_is_the_adversarys_confusion():
    adv, h, y = LinearAdversary(), torch.randn(6, 3), torch.randn(6)
    term = ConfusionObjective().term(adv, h, None, y)
    assert torch.equal(term, adv.confusion(h, y))
    assert not ConfusionObjective.joint_step


def test_confusion_is_lowest_when_the_discriminator_cannot_tell(records):
    """Face matching: balanced BCE to 0.5 is log 2 exactly when D outputs 0.5, higher
    otherwise; attributes: cross-entropy to uniform is log 2 + log 3 at uniform outputs."""
    torch.manual_seed(0)
    batch = collate_records([strip_sensitive(r) for r in records])
    face = FaceMatchAdversary(8, 8, 16)
    obs = face.observe(batch, "train")
    h = torch.randn(len(batch), 8)
    assert ConfusionObjective().term(face, h, batch, obs) > math.log(2) + 1e-4
    torch.nn.init.zeros_(face.discriminator.heads[0].mlp[-1].weight)
    torch.nn.init.zeros_(face.discriminator.heads[0].mlp[-1].bias)
    assert torch.isclose(ConfusionObjective().term(face, h, batch, obs), torch.tensor(math.log(2)))
    lab = LabelAdversary(8, 16)
    full = collate_records(records)
    obs = lab.observe(full, "train")
    assert ConfusionObjective().term(lab, h, full, obs) > math.log(6) + 1e-4
    for layer in (lab.classifier.gender, lab.classifier.ethnicity):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    assert torch.isclose(ConfusionObjective().term(lab, h, full, obs), torch.tensor(math.log(6)))


def test_minimax_pushes_h_up_the_adversarys_loss():
    adv, y = LinearAdversary(), torch.randn(6)
    h = torch.randn(6, 3, requires_grad=True)
    term = MinimaxObjective().term(adv, h, None, y)
    assert torch.equal(term, -adv(h, y).loss)
    (g_term,) = torch.autograd.grad(term, h)
    (g_adv,) = torch.autograd.grad(adv(h, y).loss, h)
    assert torch.allclose(g_term, -g_adv) and g_adv.abs().sum() > 0


def test_reversal_is_one_joint_step_with_the_gradient_reversed():
    """GRL: the adversary's loss as it is (the adversary minimises it) while h receives its
    gradient times -weight."""
    assert ReversalObjective.joint_step
    adv, y = LinearAdversary(), torch.randn(6)
    h = torch.randn(6, 3, requires_grad=True)
    out = ReversalObjective().joint_loss(adv, h, y, 0.3)
    assert torch.allclose(out.loss, adv(h, y).loss)
    out.loss.backward()
    h2 = h.detach().clone().requires_grad_(True)
    adv2 = LinearAdversary()
    adv2(h2, y).loss.backward()
    assert torch.allclose(h.grad, -0.3 * h2.grad)
    assert torch.allclose(adv.w.grad, adv2.w.grad)  # the adversary itself learns normally
    with pytest.raises(NotImplementedError):
        ReversalObjective().term(adv, h, None, y)


class _Batch:
    def __init__(self, identity):
        self.identity = identity


def test_dependence_is_hsic_on_one_row_per_person():
    """The term is CKA(h, target) over the first row of each person, scaled by rows /
    batch; only h gets its gradient."""
    torch.manual_seed(0)
    adv = LinearAdversary()
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 4, 5])
    h = torch.randn(8, 3, requires_grad=True)
    y = torch.randn(8)
    obj = DependenceObjective(h_dim=3)
    term = obj.term(adv, h, _Batch(ids), y)
    one = occurrence_index(ids) == 0
    assert torch.allclose(term, kernel_dependence(h[one], y[one, None]) * (6 / 8))
    term.backward()
    assert h.grad.abs().sum() > 0 and adv.w.grad is None
    # a target that h determines is found, an independent one hardly
    x = torch.randn(64, 3)
    dep = DependenceObjective(h_dim=3).term(adv, x, _Batch(torch.arange(64)), x[:, 0])
    ind = DependenceObjective(h_dim=3).term(adv, x, _Batch(torch.arange(64)), torch.randn(64))
    assert dep > 0.3 and abs(float(ind)) < 0.1


def test_dependence_queue_adds_recent_rows(monkeypatch):
    """The estimate uses the batch plus up to `queue_size` queued rows, only while
    training; the term is scaled by rows / batch."""
    obj = DependenceObjective(h_dim=8, queue_size=12).train()
    rows = []

    def fake(x, y, kernel, measure, eps):
        rows.append((x.shape[0], y.shape[0]))
        return torch.tensor(0.5)

    monkeypatch.setattr(objectives, "kernel_dependence", fake)
    people = iter(range(100))
    terms = [obj.dependence(torch.randn(5, 8), torch.randn(5, 3),
                            torch.tensor([next(people) for _ in range(5)]))
             for _ in range(4)]
    assert rows == [(5, 5), (10, 10), (15, 15), (17, 17)]  # queue capped at 12
    assert [round(float(t), 3) for t in terms] == [0.5, 1.0, 1.5, 1.7]
    obj.eval()  # no queue outside training, and it is left as it was
    obj.dependence(torch.randn(5, 8), torch.randn(5, 3), torch.arange(5))
    assert rows[-1] == (5, 5) and len(obj.queue) == 12


def test_dependence_keeps_one_row_per_person_over_batch_and_queue(monkeypatch):
    """Two clips of one person would make the term remove identity; the batch's row of a
    person wins over queued ones, and the queue itself keeps every row."""
    obj = DependenceObjective(h_dim=8, queue_size=20).train()
    seen = []
    monkeypatch.setattr(objectives, "kernel_dependence",
                        lambda x, y, kernel, measure, eps: seen.append((x, y)) or torch.tensor(0.0))
    first = torch.randn(4, 8)
    obj.dependence(first, torch.randn(4, 3), torch.tensor([0, 1, 1, 2]))
    assert len(seen[-1][0]) == 3 and torch.equal(seen[-1][0], first[[0, 1, 3]])
    second = torch.randn(3, 8)
    obj.dependence(second, torch.randn(3, 3), torch.tensor([2, 5, 6]))
    used = seen[-1][0]
    # batch rows (people 2, 5, 6), then queued people 0 and 1 (not 2, not 1 twice)
    assert torch.equal(used, torch.cat([second, first[[0, 1]]]))
    assert len(obj.queue) == 7


def test_dependence_on_a_split_averages_slices_of_kth_clips():
    """Eval: the whole split's rows, one estimate per slice holding each person's k-th clip
    (slices under 4 rows skipped), averaged; then it starts over."""
    torch.manual_seed(0)
    adv = LinearAdversary()
    obj = DependenceObjective(h_dim=3).eval()
    h, y = torch.randn(20, 3), torch.randn(20)
    ids = torch.cat([torch.arange(10), torch.arange(6), torch.arange(4)])  # slices 10, 6, 4
    for part in (slice(0, 7), slice(7, 20)):
        obj.eval_update(adv, h[part], _Batch(ids[part]), y[part])
    got = obj.eval_compute()
    want = torch.stack([kernel_dependence(h[s], y[s, None])
                        for s in (slice(0, 10), slice(10, 16), slice(16, 20))]).mean()
    assert torch.allclose(got["dependence"], want)
    assert obj.eval_compute() == {}
    assert ConfusionObjective().eval_compute() == {}



class _Out:
    """A stand-in ScorerOutput: h and the branch outputs."""

    def __init__(self, **reps):
        self.reps = reps

    @property
    def h(self):
        return self.reps["fused"]


def test_dependence_on_several_layers_sums_each_layers_term_on_one_row_per_person():
    """dependence_layers: the term is the sum of each layer's dependence on the target, over
    the same rows (one per person); eval reports the sum and each layer."""
    torch.manual_seed(0)
    adv = LinearAdversary()
    fused, audio = torch.randn(12, 5), torch.randn(12, 4)
    obj = DependenceObjective(h_dim=5, layers={"fused": 5, "audio": 4})
    rep = obj.representation(_Out(fused=fused, audio=audio, text=torch.randn(12, 4)))
    assert torch.equal(rep, torch.cat([fused, audio], 1))
    ids, y = torch.tensor([0, 1, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]), torch.randn(12)
    one = occurrence_index(ids) == 0
    want = (kernel_dependence(fused[one], y[one, None])
            + kernel_dependence(audio[one], y[one, None])) * (one.sum() / 12)
    assert torch.allclose(obj.term(adv, rep, _Batch(ids), y), want)
    # h alone by default: the representation is h itself
    assert DependenceObjective(h_dim=5).representation(_Out(fused=fused)) is fused
    obj.eval()
    obj.eval_update(adv, rep, _Batch(torch.arange(12)), y)
    got = obj.eval_compute()
    assert set(got) == {"dependence", "dependence_fused", "dependence_audio"}
    assert torch.allclose(got["dependence"], got["dependence_fused"] + got["dependence_audio"])
    assert torch.allclose(got["dependence_audio"], kernel_dependence(audio, y[:, None]))


def test_dependence_layers_are_read_from_the_config_and_refused_where_nothing_reads_them():
    cfg = load_config("label_adversary", [("adversary.objective", "dependence"),
                                          ("adversary.dependence_layers", ["fused", "audio"])])
    obj = DependenceObjective.from_config(cfg.model, cfg.adversary)
    assert obj.layers == {"fused": cfg.model.fused_dim, "audio": cfg.model.hidden_dim}
    for bad in ([("adversary.dependence_layers", ["fused", "audio"])],  # confusion reads h
                [("adversary.objective", "dependence"), ("adversary.dependence_layers", ["score"])],
                [("adversary.objective", "dependence"), ("adversary.dependence_layers", [])]):
        with pytest.raises(ConfigError, match="dependence_layers"):
            load_config("label_adversary", bad)


class _OneHot(LinearAdversary):
    def dependence_target(self, obs):
        return obs


def _planted_branch_readout(layers, plant: bool, steps: int = 300):
    """A two-branch model trained on a task plus the label dependence of `layers`; the
    voice branch's input carries gender when `plant`. Returns how well a fresh logistic
    read-out finds gender in the voice branch's output and in h, and the task's R^2."""
    gen = torch.Generator().manual_seed(0)
    n = 512
    gender = torch.randint(0, 2, (n,), generator=gen)
    merit = torch.randn(n, 1, generator=gen)
    words = torch.cat([merit, torch.randn(n, 3, generator=gen)], 1)
    voice = torch.randn(n, 4, generator=gen)
    if plant:
        voice[:, 0] += 3.0 * (2.0 * gender - 1.0)
    target = torch.nn.functional.one_hot(gender, 2).float()
    torch.manual_seed(0)
    text, audio = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
    fusion, head = torch.nn.Linear(16, 8), torch.nn.Linear(8, 1)
    params = [p for m in (text, audio, fusion, head) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=0.01)
    obj = DependenceObjective(h_dim=8, measure="nocco", layers={n_: 8 for n_ in layers})

    def forward(rows):
        reps = {"text": torch.tanh(text(words[rows])), "audio": torch.tanh(audio(voice[rows]))}
        reps["fused"] = torch.tanh(fusion(torch.cat([reps["text"], reps["audio"]], 1)))
        return reps, head(reps["fused"])

    for _ in range(steps):
        rows = torch.randint(0, n, (128,), generator=gen)
        reps, pred = forward(rows)
        loss = torch.nn.functional.mse_loss(pred, merit[rows])
        if layers:
            loss = loss + 1.0 * obj.term(_OneHot(), obj.representation(_Out(**reps)),
                                         _Batch(rows), target[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        reps, pred = forward(torch.arange(n))
    r2 = 1 - float(((pred - merit) ** 2).mean() / merit.var())

    def readout(x):  # logistic regression, fitted on half, scored on the other half
        w = torch.zeros(x.shape[1] + 1, requires_grad=True)
        xb = torch.cat([(x - x.mean(0)) / (x.std(0) + 1e-6), torch.ones(n, 1)], 1)
        fit, held = slice(0, n // 2), slice(n // 2, n)
        lbfgs = torch.optim.LBFGS([w], max_iter=200)

        def closure():
            lbfgs.zero_grad()
            out = torch.nn.functional.binary_cross_entropy_with_logits(
                xb[fit] @ w, gender[fit].float()) + 1e-3 * w.pow(2).sum()
            out.backward()
            return out
        lbfgs.step(closure)
        return float(((xb[held] @ w > 0).long() == gender[held]).float().mean())

    return readout(reps["audio"]), readout(reps["fused"]), r2


def test_dependence_on_the_voice_branch_removes_a_planted_channel_where_it_enters():
    """Gender planted in the voice input: the term on h alone leaves it readable in the
    voice branch's output; with the branch among the layers it is gone from both, and the
    task is kept. Without a planted channel the layered term leaves the task alone."""
    branch_free, h_free, _ = _planted_branch_readout([], plant=True)
    assert branch_free > 0.95 and h_free > 0.8  # the channel is there to remove
    branch_h, h_h, r2_h = _planted_branch_readout(["fused"], plant=True)
    assert h_h < 0.65 and branch_h > 0.9, (h_h, branch_h)
    branch_both, h_both, r2_both = _planted_branch_readout(["fused", "audio"], plant=True)
    assert branch_both < 0.65 and h_both < 0.65, (branch_both, h_both)
    assert r2_both > 0.8 and r2_h > 0.8
    _, _, r2_plain = _planted_branch_readout([], plant=False)
    _, _, r2_clean = _planted_branch_readout(["fused", "audio"], plant=False)
    assert r2_clean > r2_plain - 0.05, (r2_clean, r2_plain)


def test_the_old_names_of_the_dependence_objective_are_still_read(tmp_path):
    """`objective: hsic` and `hsic_h_kernel` (the names before the rename) in an override, an
    experiment file and a checkpoint's hyperparameters mean `dependence` and
    `dependence_h_kernel`; setting a key under both names is an error."""
    from fair_lightning.config import renamed_group

    old = load_config("adversarial", [("adversary.objective", "hsic"),
                                      ("adversary.hsic_h_kernel", "linear")])
    assert old.adversary.objective == "dependence"
    assert old.adversary.dependence_h_kernel == "linear"
    exp = tmp_path / "mine.yaml"
    exp.write_text("adversary:\n  method: indirect\n  objective: hsic\n  hsic_h_kernel: linear\n")
    cfg = load_config(str(exp))
    assert (cfg.adversary.objective, cfg.adversary.dependence_h_kernel) == ("dependence", "linear")
    exp.write_text("adversary:\n  hsic_h_kernel: linear\n  dependence_h_kernel: gaussian\n")
    with pytest.raises(ConfigError, match="old name of 'adversary.dependence_h_kernel'"):
        load_config(str(exp))
    hp = renamed_group("adversary", {"objective": "hsic", "hsic_h_kernel": "linear", "k_disc": 1})
    assert hp == {"objective": "dependence", "dependence_h_kernel": "linear", "k_disc": 1}
    assert renamed_group("model", {"objective": "hsic"}) == {"objective": "hsic"}
