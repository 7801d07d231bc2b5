import torch

from data_modules.collate import collate_records
from fair_lightning.models import (
    SCORER_REPRESENTATIONS,
    AttributeAdversary,
    FaceBank,
    FaceEncoder,
    FaceMatchDiscriminator,
    MultimodalScorer,
    grad_reverse,
    sample_pairs,
)
from fair_lightning.models.encoders import AttentionPool


def _scorer(kind="gru"):
    return MultimodalScorer(text_dim=384, audio_dim=8, hidden_dim=16, fused_dim=8, dropout=0.0,
                            audio_encoder=kind, video_channels=4)


def test_scorer_outputs_named_representations(records):
    b = collate_records(records[:5])
    for kind in ("gru", "conv"):
        out = _scorer(kind)(b)
        assert set(out.reps) == set(SCORER_REPRESENTATIONS)
        assert out.h.shape == (5, 8) and out.score.shape == (5,)
        assert ((out.score > 0) & (out.score < 1)).all()


def test_padding_does_not_change_the_output(records):
    torch.manual_seed(0)
    m = _scorer().eval()
    alone = m(collate_records(records[:1])).score
    padded = m(collate_records(records[:4])).score[:1]  # others force longer padding
    assert torch.allclose(alone, padded, atol=1e-5)


def test_attention_pool_ignores_masked_steps_and_empty_sequences():
    pool = AttentionPool(3)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    y = pool(x, mask)
    x2 = x.clone()
    x2[0, 2:] = 1e3
    assert torch.allclose(pool(x2, mask), y)
    assert torch.equal(y[1], torch.zeros(3))


def test_grl_flips_and_scales_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.5) * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))
    y = torch.randn(4, 3)
    assert torch.equal(grad_reverse(y, 2.0), y)


def test_negatives_never_share_identity():
    gen = torch.Generator().manual_seed(0)
    for own in (True, False):
        for _ in range(50):
            ident = torch.randint(0, 5, (16,), generator=gen)
            h_idx, f_idx, tgt = sample_pairs(ident, 3, own_positives=own, generator=gen)
            neg = tgt == 0
            assert (ident[h_idx[neg]] != ident[f_idx[neg]]).all()
            # own faces are the only in-batch positives; 3 negatives for every clip with
            # another identity present
            assert (~neg).sum() == (16 if own else 0)
            assert torch.equal(h_idx[~neg], f_idx[~neg])
            has_other = (ident.unsqueeze(0) != ident.unsqueeze(1)).any(1).sum()
            assert neg.sum() == 3 * has_other


def test_single_identity_batch_has_no_negatives():
    h_idx, f_idx, tgt = sample_pairs(torch.zeros(4, dtype=torch.long), 2)
    assert (tgt == 1).all() and len(tgt) == 4
    h_idx, f_idx, tgt = sample_pairs(torch.zeros(4, dtype=torch.long), 2, own_positives=False)
    assert len(tgt) == len(h_idx) == len(f_idx) == 0


def test_face_bank_gives_another_clip_of_the_same_person():
    bank = FaceBank(per_identity=2)
    faces = torch.rand(4, 2, 3, 8, 8)
    ident = torch.tensor([7, 7, 9, 9])
    bank.add(ident[:3], ["a1", "a2", "b1"], faces[:3])
    rows, got = bank.lookup(ident, ["a1", "a2", "b1", "b2"])
    # a1 <-> a2 pair up; b1 finds no *other* clip of person 9; b2 finds b1
    assert rows.tolist() == [0, 1, 3]
    assert torch.allclose(got[0], faces[1], atol=0.5 / 255)  # stored as uint8
    assert torch.allclose(got[1], faces[0], atol=0.5 / 255)
    assert torch.allclose(got[2], faces[2], atol=0.5 / 255)
    bank.add(torch.tensor([7, 7]), ["a3", "a4"], faces[:2])  # keeps the 2 latest per person
    assert len(bank) == 3 and set(bank.clips[7]) == {"a3", "a4"}
    rows, got = bank.lookup(torch.tensor([5]), ["z"])
    assert rows.numel() == 0 and got is None


def test_discriminator_and_adversary_shapes(tmp_path):
    faces = torch.rand(6, 2, 3, 16, 16)
    enc = FaceEncoder(8, channels=4)
    f = enc(faces)
    assert f.shape == (6, 8)
    assert FaceMatchDiscriminator(5, 8, 16)(torch.randn(6, 5), f).shape == (6,)
    g, e = AttributeAdversary(5, 16)(torch.randn(6, 5))
    assert g.shape == (6, 2) and e.shape == (6, 3)
    # a frozen encoder loads a user checkpoint and has no trainable parameter
    torch.save(enc.state_dict(), tmp_path / "face.pt")
    frozen = FaceEncoder.from_checkpoint(tmp_path / "face.pt", 8, channels=4)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training
    enc.eval()
    assert torch.allclose(frozen(faces), enc(faces))


def test_discriminator_heads_are_independent_and_averaged():
    torch.manual_seed(0)
    d = FaceMatchDiscriminator(5, 8, 16, heads=3).eval()
    h, f = torch.randn(6, 5), torch.randn(6, 8)
    per_head = d.head_logits(h, f)
    assert per_head.shape == (3, 6)
    assert not torch.allclose(per_head[0], per_head[1])  # different initialisations
    assert torch.allclose(d(h, f), per_head.mean(0))


def test_adversaries_ignore_the_scale_of_h():
    """Shrinking h (a cheap way to fool an adversary) changes nothing after standardisation,
    just as it changes nothing for a probe that standardises its inputs."""
    torch.manual_seed(0)
    h, f = torch.randn(16, 5), torch.randn(16, 8)
    d, a = FaceMatchDiscriminator(5, 8, 16), AttributeAdversary(5, 16)
    assert torch.allclose(d(h, f), d(h * 1e-3, f), atol=5e-3)
    assert torch.allclose(a(h)[0], a(h * 1e-3)[0], atol=5e-3)
