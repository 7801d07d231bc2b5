"""The face proxy reduced to its leading directions across people (label-free)."""

import pytest
import torch

from fair_lightning.config import ConfigError, load_config
from fair_lightning.models import FaceMatchAdversary
from fair_lightning.models.proxy import ProxyComponents


def _people(n_people=60, clips=3, dim=32, seed=0):
    """Embeddings whose person means vary most along one planted axis (a binary look, as
    gender in a face descriptor), with who-a-person-is spread thinly over every dim."""
    g = torch.Generator().manual_seed(seed)
    look = torch.randint(0, 2, (n_people,), generator=g).float() * 2 - 1
    axis = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    person = 3.0 * look[:, None] * axis + 0.5 * torch.randn(n_people, dim, generator=g)
    ident = torch.arange(n_people).repeat_interleave(clips)
    x = person[ident] + 0.2 * torch.randn(len(ident), dim, generator=g)
    return x, ident, look, axis


def _retrieval(z, ident):
    d = torch.cdist(z, z)
    d.fill_diagonal_(float("inf"))
    return (ident[d.argmin(1)] == ident).float().mean().item()


def test_components_keep_the_broad_look_and_drop_who_a_person_is():
    x, ident, look, axis = _people()
    comp = ProxyComponents(32, 1)
    stats = comp.fit(x, ident)
    z = comp(x)
    assert z.shape == (len(x), 1)
    assert abs(torch.corrcoef(torch.stack([z[:, 0], look[ident]]))[0, 1]) > 0.95
    assert abs(float(comp.basis[0] @ axis)) > 0.95
    # the full embedding finds a person's other clips; one direction mostly cannot
    assert _retrieval(x, ident) > 0.9 and _retrieval(z, ident) < 0.5
    # unit spread across people, and the share it reports is the explained variance
    means = torch.stack([z[ident == p].mean(0) for p in range(60)])
    assert means.std(0, unbiased=True).item() == pytest.approx(1.0, abs=1e-4)
    assert stats["proxy/components_variance_share"] == pytest.approx(float(comp.explained.sum()))
    assert 0.5 < stats["proxy/components_variance_share"] < 1.0


def test_components_count_each_person_once_whatever_their_clips():
    """A person with many clips must not pull the directions toward themselves."""
    x, ident, _, _ = _people()
    a = ProxyComponents(32, 2)
    a.fit(x, ident)
    many = torch.cat([x, x[ident == 0].repeat(20, 1)])
    b = ProxyComponents(32, 2)
    b.fit(many, torch.cat([ident, torch.zeros(60, dtype=torch.long)]))
    assert torch.allclose(a.basis, b.basis, atol=1e-5)


def test_components_fit_is_deterministic_and_travels_in_the_state_dict():
    x, ident, _, _ = _people()
    a, b = ProxyComponents(32, 3), ProxyComponents(32, 3)
    a.fit(x, ident)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    b.fit(x[perm], (ident[perm] * 7) % 60)  # the clips in another order, people renumbered
    assert torch.allclose(a.basis, b.basis, atol=1e-5)
    # signs fixed, not left to the SVD: each direction's largest coordinate is positive
    top = a.basis.gather(1, a.basis.abs().argmax(1, keepdim=True))
    assert (top > 0).all()
    c = ProxyComponents(32, 3)
    assert not c.fitted
    c.load_state_dict(a.state_dict())
    assert c.fitted and torch.equal(c(x), a(x))


def test_components_refuse_what_they_cannot_fit():
    with pytest.raises(ValueError, match="1..8"):
        ProxyComponents(8, 9)
    with pytest.raises(RuntimeError, match="before `fit`"):
        ProxyComponents(8, 1)(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="3 people.*k=3"):
        ProxyComponents(8, 3).fit(torch.randn(6, 8), torch.arange(3).repeat(2))
    flat = torch.zeros(20, 8)
    flat[:, 0] = torch.arange(20).float()  # the people vary along one direction only
    with pytest.raises(ValueError, match="near-constant"):
        ProxyComponents(8, 2).fit(flat, torch.arange(20))


def test_adversary_with_components_sees_only_them(records):
    from data_modules.collate import collate_records, strip_sensitive

    batch = collate_records([strip_sensitive(r) for r in records])
    adv = FaceMatchAdversary(8, 8, 16, face_encoder="identity", components=2)
    assert adv.discriminator.heads[0].proj.out_features == 2  # D matches h to 2 numbers
    with torch.no_grad():
        f = adv.encoder_embed(batch)
        adv.components.fit(torch.cat([f, f + 0.1 * torch.randn_like(f)]),
                           torch.arange(len(f)).repeat(2))
        assert torch.allclose(adv.embed(batch), adv.components(f))
        assert adv.observe(batch, "train").faces.shape[1] == 2
    with pytest.raises(ValueError, match="frozen face encoder"):
        FaceMatchAdversary(8, 8, 16, face_encoder="cnn", components=2)


def test_components_config_is_checked():
    with pytest.raises(ConfigError, match="frozen face encoder"):
        load_config("adversarial", [("model.face_encoder", "cnn"),
                                    ("model.face_proxy_components", "2")])
    with pytest.raises(ConfigError, match="adversary.method=indirect"):
        load_config("baseline", [("model.face_proxy_components", "2")])
    with pytest.raises(ConfigError, match="exceeds the face embedding's 32 dims"):
        load_config("adversarial", [("model.face_proxy_components", "33")])
    with pytest.raises(ConfigError, match=">= 0"):
        load_config("adversarial", [("model.face_proxy_components", "-1")])
    cfg = load_config("adversarial", [("model.face_proxy_components", "2")])
    assert FaceMatchAdversary.from_config(cfg.model, cfg.adversary).components.k == 2


def test_a_resumed_run_keeps_its_fitted_components():
    """The checkpoint is restored before fit starts: fitted components are not refitted
    (a refit would read the data; here there is none to read)."""
    from types import SimpleNamespace

    from fair_lightning.lightning.proxy_fit import ProxyComponentsFit

    x, ident, _, _ = _people()
    comp = ProxyComponents(32, 2)
    comp.fit(x, ident)
    before = comp.basis.clone()
    cb = ProxyComponentsFit(datamodule=None)
    cb.on_fit_start(None, SimpleNamespace(adversary=SimpleNamespace(components=comp)))
    assert torch.equal(comp.basis, before) and cb.metrics == {}


def _face_and_voice(n_people=300, clips=3, dim=24, seed=0):
    """A face whose person means vary most along a look that the voice does not show (the
    photograph, skin tone), and less along gender, which the voice shows too; merit lives in
    the voice alone (a speaking rate)."""
    g = torch.Generator().manual_seed(seed)
    gender = torch.randint(0, 2, (n_people,), generator=g).float() * 2 - 1
    look = torch.randn(n_people, generator=g)
    merit = torch.randn(n_people, generator=g)
    axes = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
    face = (4.0 * look[:, None] * axes[:, 0] + 1.0 * gender[:, None] * axes[:, 1]
            + 0.3 * torch.randn(n_people, dim, generator=g))
    voice = torch.stack([gender + 0.3 * torch.randn(n_people, generator=g), 2.0 * merit,
                         torch.randn(n_people, generator=g)], 1)
    ident = torch.arange(n_people).repeat_interleave(clips)
    x = face[ident] + 0.2 * torch.randn(len(ident), dim, generator=g)
    v = voice[ident] + 0.2 * torch.randn(len(ident), 3, generator=g)
    return x, v, ident, gender, look, merit


def _corr(a, b):
    return abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1]))


def test_cross_modal_direction_is_what_face_and_voice_share_not_the_faces_leading_look():
    x, v, ident, gender, look, merit = _face_and_voice()
    lead = ProxyComponents(24, 1)
    lead.fit(x, ident)
    assert _corr(lead(x)[:, 0], look[ident]) > 0.95  # the face's own leading look
    assert _corr(lead(x)[:, 0], gender[ident]) < 0.3
    cross = ProxyComponents(24, 1, "cross_modal")
    stats = cross.fit(x, ident, {"voice": v})
    z = cross(x)[:, 0]  # read from the face alone
    assert _corr(z, gender[ident]) > 0.9 and _corr(z, look[ident]) < 0.2
    assert _corr(z, merit[ident]) < 0.15  # merit is in one channel only
    assert 0.8 < stats["proxy/canonical_correlation_1"] <= 1.0
    means = torch.stack([z[ident == p].mean() for p in range(300)])
    assert means.std().item() == pytest.approx(1.0, abs=1e-3)  # unit spread across people
    both = ProxyComponents(24, 1, "both")
    both.fit(x, ident, {"voice": v})
    zb = both(x)
    assert zb.shape == (len(x), 2) and both.out_dim == 2
    assert torch.allclose(zb[:, 0], lead(x)[:, 0], atol=1e-4)
    assert torch.allclose(zb[:, 1], z, atol=1e-4)


def test_cross_modal_needs_the_voice_and_enough_directions_on_each_side():
    x, v, ident, *_ = _face_and_voice(n_people=40)
    with pytest.raises(ValueError, match="needs the clips' voice$"):
        ProxyComponents(24, 1, "cross_modal").fit(x, ident)
    with pytest.raises(ValueError, match="principal directions on each side"):
        ProxyComponents(24, 4, "cross_modal").fit(x, ident, {"voice": v})  # 3 voice dims
    with pytest.raises(ValueError, match="kind must be one of"):
        ProxyComponents(24, 1, "voice")


def test_text_or_both_partners_find_what_the_face_shares_with_them():
    """The words show gender too (and merit, in the answers); the voice shows gender and a
    speaking rate of merit. Shared with the text, or with voice and text joined, the face's
    direction is still gender, not its leading look, nor merit; a partner missing at fit is
    named."""
    x, v, ident, gender, look, merit = _face_and_voice()
    g = torch.Generator().manual_seed(1)
    people = len(gender)
    mix = torch.randn(3, 40, generator=g)
    words = torch.stack([gender, 2.0 * merit, torch.randn(people, generator=g)], 1) @ mix
    t = words[ident] + 0.5 * torch.randn(len(ident), 40, generator=g)
    for partners, views in ((("text",), {"text": t}),
                            (("voice", "text"), {"voice": v, "text": t})):
        comp = ProxyComponents(24, 1, "cross_modal", partners)
        stats = comp.fit(x, ident, views)
        z = comp(x)[:, 0]
        assert _corr(z, gender[ident]) > 0.9, partners
        assert _corr(z, look[ident]) < 0.2 and _corr(z, merit[ident]) < 0.2, partners
        assert stats["proxy/canonical_correlation_1"] > 0.8
    with pytest.raises(ValueError, match="needs the clips' text"):
        ProxyComponents(24, 1, "cross_modal", ("voice", "text")).fit(x, ident, {"voice": v})
    with pytest.raises(ValueError, match="partners must be distinct"):
        ProxyComponents(24, 1, "cross_modal", ("voice", "voice"))
    with pytest.raises(ValueError, match="partners must be distinct"):
        ProxyComponents(24, 1, "cross_modal", ("face",))


def test_text_statistics_read_real_sentences_only():
    from fair_lightning.models.proxy import text_statistics

    text = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    assert torch.allclose(text_statistics(text, torch.tensor([[True, True, False]])),
                          torch.tensor([[2.0, 4.0]]))


def test_voice_statistics_read_real_frames_only():
    from fair_lightning.models.proxy import voice_statistics

    audio = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    np_stats = voice_statistics(audio, mask)
    assert torch.allclose(np_stats, torch.tensor([[2.0, 3.0, 1.0, 1.0]]))


def test_the_cross_modal_proxy_is_a_config_choice_with_clear_errors():
    cfg = load_config("adversarial", [("model.face_proxy", "both"),
                                      ("model.face_proxy_components", "2")])
    adv = FaceMatchAdversary.from_config(cfg.model, cfg.adversary)
    assert adv.components.kind == "both" and adv.components.out_dim == 4
    assert adv.discriminator is not None
    # auto: 2 canonical directions on any source (the synthetic leading proxy is whole)
    assert load_config("adversarial", [("model.face_proxy", "cross_modal")]
                       ).model.face_proxy_components == 2
    for bad in ([("model.face_proxy", "cross_modal"), ("model.face_proxy_components", "0")],
                [("model.face_proxy", "cross_modal"), ("model.face_proxy_components", "11")]):
        with pytest.raises(ConfigError, match="model.face_proxy"):
            load_config("adversarial", bad)
    with pytest.raises(ConfigError, match="model.face_proxy"):
        load_config("adversarial", [("model.face_proxy", "voice")])
    with pytest.raises(ConfigError, match="speaker_norm"):
        load_config("adversarial", [("model.face_proxy", "cross_modal"),
                                    ("model.face_proxy_components", "1"),
                                    ("data.speaker_norm", "person")])
    # the words are not touched by the speaker normalisation
    cfg = load_config("adversarial", [("model.face_proxy", "cross_modal"),
                                      ("model.face_proxy_components", "1"),
                                      ("model.face_proxy_partners", "[text]"),
                                      ("data.speaker_norm", "person")])
    adv = FaceMatchAdversary.from_config(cfg.model, cfg.adversary)
    assert adv.components.partners == ("text",)
    for bad in ("[]", "[voice,voice]", "[face]"):
        with pytest.raises(ConfigError, match="face_proxy_partners"):
            load_config("adversarial", [("model.face_proxy", "cross_modal"),
                                        ("model.face_proxy_components", "1"),
                                        ("model.face_proxy_partners", bad)])


class _Holder(torch.nn.Module):
    """What the fit callback reads of a LightningModule: the adversary and the device."""

    def __init__(self, adversary):
        super().__init__()
        self.adversary = adversary

    @property
    def device(self):
        return torch.device("cpu")


def test_the_fit_callback_is_label_free_and_deterministic():
    """The cross-modal fit reads the training split through a loader without sensitive
    attributes (reading them would raise), and gives the same directions whatever the order
    of its batches."""
    from data_modules.collate import collate_records, strip_sensitive
    from fair_lightning.lightning.proxy_fit import ProxyComponentsFit
    from tests.conftest import make_records

    recs = [strip_sensitive(r) for r in make_records(n_ids=24, clips=2)]
    batches = [collate_records(recs[i:i + 8]) for i in range(0, len(recs), 8)]

    class Data:
        asked: list = []

        def __init__(self, order):
            self.order = order

        def eval_dataloader(self, split, sensitive=True):
            Data.asked.append((split, sensitive))
            return [batches[i] for i in self.order]

    def fitted(order):
        torch.manual_seed(0)
        adv = FaceMatchAdversary(8, 8, 16, face_encoder="identity", components=1,
                                 proxy_kind="cross_modal", proxy_partners=("voice", "text"))
        ProxyComponentsFit(Data(order)).on_fit_start(None, _Holder(adv))
        return adv.components

    a, b = fitted(range(len(batches))), fitted(reversed(range(len(batches))))
    assert Data.asked == [("train", False)] * 2
    assert a.fitted and torch.allclose(a.basis, b.basis, atol=1e-5)
    assert torch.allclose(a.explained, b.explained, atol=1e-5)
