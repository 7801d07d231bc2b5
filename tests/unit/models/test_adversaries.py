"""The adversary wrappers the training step drives: what they observe and what they learn."""

import pytest
import torch

from data_modules.batch import SensitiveAccessError
from data_modules.collate import collate_records, strip_sensitive
from fair_lightning.config import load_config
from fair_lightning.models import FaceEncoder, FaceMatchAdversary, LabelAdversary
from fair_lightning.models.adversaries import AttributeTargets, balanced_bce, masked_ce


def _face(**kw):
    return FaceMatchAdversary(8, 8, 16, **kw)


def test_face_match_observes_pairs_and_encodes_their_faces(records):
    torch.manual_seed(0)
    batch = collate_records([strip_sensitive(r) for r in records])
    adv = _face(negatives_per_positive=3)
    obs = adv.observe(batch, "train")
    b = len(batch)
    assert obs.faces.shape == (b, 8)  # own faces only: one embedding per clip
    assert (obs.target == 1).sum() == b and (obs.target == 0).sum() == 3 * b
    pos = obs.target == 1
    assert torch.equal(obs.h_idx[pos], obs.f_idx[pos])
    neg = ~pos
    assert (batch.identity[obs.h_idx[neg]] != batch.identity[obs.f_idx[neg]]).all()
    adv.eval()
    assert torch.allclose(adv.observe(batch, "train").faces, adv.face_encoder(batch.faces))
    assert not obs.detach().faces.requires_grad and obs.faces.requires_grad


def test_face_match_learns_to_match_faces_to_h(records):
    """D's loss is the per-head balanced BCE on the pairs, and minimising it on an h that
    carries the face embedding teaches D to match."""
    torch.manual_seed(0)
    batch = collate_records([strip_sensitive(r) for r in records])
    adv = _face(heads=2)
    obs = adv.observe(batch, "train").detach()
    h = obs.faces[: len(batch)]  # h = f: matching is learnable
    out = adv(h, obs)
    logits = adv.discriminator.head_logits(h[obs.h_idx], obs.faces[obs.f_idx])
    want = torch.stack([balanced_bce(lg, obs.target) for lg in logits]).mean()
    assert torch.allclose(out.loss, want)
    assert torch.allclose(out.logits, logits.mean(0)) and torch.equal(out.target, obs.target)
    assert not out.logits.requires_grad
    opt = torch.optim.Adam(adv.discriminator.parameters(), lr=0.01)
    first = float(out.loss.detach())
    for _ in range(100):
        opt.zero_grad()
        loss = adv(h, obs).loss
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_face_match_dependence_target_is_the_batch_face_embedding(records):
    batch = collate_records([strip_sensitive(r) for r in records])
    adv = _face()
    obs = adv.observe(batch, "train")
    target = adv.dependence_target(obs)
    assert torch.equal(target[: len(batch)], obs.faces[: len(batch)].detach())
    assert not target.requires_grad


def test_face_banks_only_with_other_clip_positives(records):
    batch = collate_records([strip_sensitive(r) for r in records])
    own = _face()
    own.remember(batch, "train")
    assert all(len(bank) == 0 for bank in own.face_banks.values())
    other = _face(positive_faces="other_clip")
    other.remember(batch, "train")
    assert len(other.face_banks["train"]) == len(batch)
    assert len(other.face_banks["val"]) == 0  # one bank per stage
    obs = other.observe(batch, "train")
    assert obs.faces.shape[0] == 2 * len(batch)  # own faces, then one banked set per clip
    assert (obs.f_idx[obs.target == 1] >= len(batch)).all()


def test_face_encoder_modes(tmp_path):
    """cnn trains with D; identity is frozen (weights come later); frozen loads a file."""
    assert any(p.requires_grad for p in _face().face_encoder.parameters())
    ident = _face(face_encoder="identity")
    assert not any(p.requires_grad for p in ident.face_encoder.parameters())
    assert any(p.requires_grad for p in ident.discriminator.parameters())
    enc = FaceEncoder(8)
    torch.save(enc.state_dict(), tmp_path / "f.pt")
    frozen = _face(face_encoder="frozen", checkpoint=str(tmp_path / "f.pt"))
    assert all(torch.equal(v, frozen.face_encoder.state_dict()[k])
               for k, v in enc.state_dict().items())
    with pytest.raises(FileNotFoundError):
        _face(face_encoder="frozen", checkpoint=str(tmp_path / "missing.pt"))


def test_label_adversary_reads_attributes_only_from_the_batch(records):
    torch.manual_seed(0)
    adv = LabelAdversary(8, 16)
    with pytest.raises(SensitiveAccessError):
        adv.observe(collate_records([strip_sensitive(r) for r in records]), "train")
    full = collate_records(records)
    obs = adv.observe(full, "train")
    assert torch.equal(obs.gender, full.sensitive.gender)
    h = torch.randn(len(full), 8)
    g, e = adv.classifier(h)
    assert torch.allclose(adv(h, obs).loss, masked_ce(g, obs.gender) + masked_ce(e, obs.ethnicity))
    assert adv(h, obs).logits is None  # nothing for the D metrics


def test_label_adversary_skips_unknown_attributes():
    adv = LabelAdversary(4, 8)
    h = torch.randn(4, 4)
    known = AttributeTargets(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 0]))
    partly = AttributeTargets(torch.tensor([0, 1, -1, -1]), torch.tensor([0, 1, -1, -1]))
    g, e = adv.classifier(h)
    assert torch.allclose(adv(h, partly).loss,
                          masked_ce(g[:2], partly.gender[:2]) + masked_ce(e[:2], partly.ethnicity[:2]))
    assert not torch.allclose(adv(h, partly).loss, adv(h, known).loss)
    target = adv.dependence_target(partly)
    assert target.tolist() == [[1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0] * 5, [0] * 5]


def test_adversaries_build_from_config():
    cfg = load_config("face_discriminator", [("adversary.heads", "3"),
                                             ("adversary.positive_faces", "other_clip")])
    face = FaceMatchAdversary.from_config(cfg.model, cfg.adversary)
    assert len(face.discriminator.heads) == 3 and not face.own_positives
    assert face.negatives_per_positive == cfg.adversary.negatives_per_positive
    lab = LabelAdversary.from_config(cfg.model, cfg.adversary)
    assert lab.classifier.body[1].in_features == cfg.model.fused_dim


def test_pretrained_face_encoder_reads_the_precomputed_descriptors(records):
    """`face_encoder: pretrained`: the face side is the mean of the clip's stored descriptors,
    unit length; nothing of it trains, and a batch without descriptors is a clear error."""
    import numpy as np

    rng = np.random.default_rng(0)
    with_emb = [{**r, "face_embedding": rng.normal(size=(2, 128)).astype(np.float16)}
                for r in records]
    batch = collate_records([strip_sensitive(r) for r in with_emb])
    adv = _face(face_encoder="pretrained")
    assert not list(adv.face_encoder.parameters())
    obs = adv.observe(batch, "train")
    want = torch.nn.functional.normalize(batch.face_embedding.mean(1), dim=-1)
    assert torch.allclose(obs.faces[: len(batch)], want)
    assert adv(torch.randn(len(batch), 8), obs.detach()).loss.isfinite()
    with pytest.raises(ValueError, match="face_embedding=dlib"):
        adv.observe(collate_records([strip_sensitive(r) for r in records]), "train")


def test_pretrained_face_encoder_needs_descriptors_in_the_data():
    from fair_lightning.config import ConfigError

    with pytest.raises(ConfigError, match="raw source.*face_embedding=dlib"):
        load_config("adversarial", [("model.face_encoder", "pretrained")])
    cfg = load_config("adversarial", [("model.face_encoder", "pretrained"),
                                      ("data.source", "manifest"),
                                      ("data.preprocess.face_embedding", "dlib")])
    adv = FaceMatchAdversary.from_config(cfg.model, cfg.adversary)
    assert adv.discriminator is not None and adv.face_input == "face_embedding"
