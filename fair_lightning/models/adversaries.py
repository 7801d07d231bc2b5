"""Adversaries on the fused representation h.

* `FaceMatchDiscriminator` D(h, f) (Hemamou et al., 2021): the logit that face embedding f
  belongs to the candidate whose interview produced h. It needs no sensitive label.
* `AttributeAdversary` A(h): predicts gender and ethnicity; the explicit-label baseline.
* `FaceMatchAdversary` and `LabelAdversary` wrap them with what the training step needs
  (face encoder, face banks, pair sampling; the attribute targets), behind one interface,
  `Adversary`; `ADVERSARIES` maps `adversary.method` to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data_modules.features.dlib_faces import DESCRIPTOR_DIM
from fair_lightning.models.encoders import small_cnn
from fair_lightning.models.proxy import ProxyComponents


class FaceEncoder(nn.Module):
    """K face frames [B, K, 3, H, W] -> one embedding [B, face_dim] (mean over frames).

    Trained with D by default. `from_checkpoint` loads a user-supplied state dict of this
    architecture and freezes it (e.g. a face-identity model trained elsewhere).
    """

    def __init__(self, face_dim: int, channels: int = 16):
        super().__init__()
        self.cnn = small_cnn(channels, face_dim)
        self.frozen = False

    @classmethod
    def from_checkpoint(cls, path: str | Path, face_dim: int, channels: int = 16) -> FaceEncoder:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"face encoder checkpoint not found: {path}")
        enc = cls(face_dim, channels)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            enc.load_state_dict(state.get("state_dict", state))
        except RuntimeError as e:
            raise ValueError(f"{path}: not a FaceEncoder(face_dim={face_dim}) state dict: {e}") \
                from None
        return enc.freeze()

    def freeze(self) -> FaceEncoder:
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True):
        # a frozen encoder keeps its BatchNorm statistics
        return super().train(mode and not self.frozen)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        b, k = faces.shape[:2]
        return self.cnn(faces.flatten(0, 1)).view(b, k, -1).mean(1)


class PrecomputedFaceEncoder(nn.Module):
    """`face_encoder: pretrained`: descriptors computed at preprocessing (dlib's ResNet) ->
    the mean over a clip's K frames, unit length. Nothing to train."""

    dim = DESCRIPTOR_DIM  # dlib's descriptor size
    frozen = True

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        if descriptors.shape[-1] != self.dim:
            raise ValueError(f"face descriptors have {descriptors.shape[-1]} dims, expected "
                             f"{self.dim}")
        return nn.functional.normalize(descriptors.float().mean(1), dim=-1)


def standardize(h_dim: int) -> nn.Module:
    """Per-feature batch standardisation of h, as the probes do (StandardScaler).

    Without it the main network fools an adversary by shrinking the scale of the features
    that carry an attribute, while a fresh probe, which rescales, still reads them.
    """
    return nn.BatchNorm1d(h_dim, affine=False, eps=1e-8)  # tiny eps: no scale floor to hide under


class _MatchHead(nn.Module):
    def __init__(self, h_dim: int, face_dim: int, hidden: int):
        super().__init__()
        self.norm = standardize(h_dim)
        self.proj = nn.Linear(h_dim, face_dim)
        self.mlp = nn.Sequential(
            nn.Linear(3 * face_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, h, f):
        p = self.proj(self.norm(h))
        return self.mlp(torch.cat([p, f, p * f], dim=-1)).squeeze(-1)


class FaceMatchDiscriminator(nn.Module):
    """D(h, f) = MLP([P z, f, P z ⊙ f]) -> logit, z = standardised h; the product term makes
    matching easy.

    With `heads` > 1, D is an ensemble of independently initialised heads over the same face
    embedding; each head is trained on its own and the main network must fool all of them,
    which is harder to do without removing the information itself.
    """

    def __init__(self, h_dim: int, face_dim: int, hidden: int, heads: int = 1):
        super().__init__()
        self.heads = nn.ModuleList(_MatchHead(h_dim, face_dim, hidden) for _ in range(heads))

    def head_logits(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """[heads, N] logits."""
        return torch.stack([head(h, f) for head in self.heads])

    def forward(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """[N] ensemble logit (mean over heads)."""
        return self.head_logits(h, f).mean(0)


class AttributeAdversary(nn.Module):
    """A(h) -> (gender logits [B, 2], ethnicity logits [B, 3])."""

    def __init__(self, h_dim: int, hidden: int, num_gender: int = 2, num_ethnicity: int = 3):
        super().__init__()
        self.body = nn.Sequential(standardize(h_dim), nn.Linear(h_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.gender = nn.Linear(hidden, num_gender)
        self.ethnicity = nn.Linear(hidden, num_ethnicity)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.body(h)
        return self.gender(z), self.ethnicity(z)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -scale backward (Ganin & Lempitsky 2015)."""
    return _GradReverse.apply(x, scale)


def sample_pairs(identity: torch.Tensor, negatives_per_positive: int, *,
                 own_positives: bool = True, generator: torch.Generator | None = None):
    """Pairs (i, j, target) for D: h of clip i with the faces of batch clip j.

    Positives: (i, i), the clip's own faces, when `own_positives` (cross-clip positives
    come from a `FaceBank` instead).
    Negatives: for every clip i, `negatives_per_positive` clips j drawn uniformly (with
    replacement) among batch clips of a *different* identity; never the same person. A clip
    whose batch holds no other identity gets no negative.
    Returns LongTensors h_idx, face_idx and a float target (1 positive, 0 negative).
    """
    b = identity.shape[0]
    device = identity.device
    idx = torch.arange(b, device=device)
    h_idx, f_idx, tgt = [], [], []
    if own_positives:
        h_idx, f_idx, tgt = [idx], [idx], [torch.ones(b, device=device)]
    diff = identity.unsqueeze(0) != identity.unsqueeze(1)  # [B, B]
    has = diff.any(1)
    if negatives_per_positive > 0 and has.any():
        choice = torch.multinomial(diff[has].float(), negatives_per_positive, replacement=True,
                                   generator=generator)
        h_idx.append(idx[has].repeat_interleave(negatives_per_positive))
        f_idx.append(choice.flatten())
        tgt.append(torch.zeros(choice.numel(), device=device))
    if not h_idx:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, device=device)
    return torch.cat(h_idx), torch.cat(f_idx), torch.cat(tgt)


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 1] -> uint8 (a quarter of the memory), on the CPU."""
    return (frames.detach() * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 255.0


class FaceBank:
    """Face frames of recently seen clips, per identity, for cross-clip positives.

    A clip's own face frames share its background, clothes and lighting with the video the
    main network sees, so D can match them on that clip-level nuisance and the main network
    can fool D by dropping the nuisance alone. Faces of *another clip of the same person*
    share only the person, so D must match on who they are. Frames are stored as uint8
    (a 32 px clip of 4 frames is 12 KB); each identity keeps its `per_identity` latest clips.
    """

    def __init__(self, per_identity: int = 3, seed: int = 0):
        self.per_identity = per_identity
        self.clips: dict[int, dict[str, torch.Tensor]] = {}
        self.rng = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return sum(len(c) for c in self.clips.values())

    def lookup(self, identity: torch.Tensor, clip_id: list[str]):
        """Faces [n, K, 3, H, W] (float in [0, 1]) of another stored clip of the same person
        for the rows listed in the returned LongTensor; rows without one are left out."""
        rows, faces = [], []
        for i, (who, cid) in enumerate(zip(identity.tolist(), clip_id, strict=True)):
            others = [f for c, f in self.clips.get(who, {}).items() if c != cid]
            if others:
                pick = int(torch.randint(len(others), (1,), generator=self.rng))
                rows.append(i)
                faces.append(others[pick])
        device = identity.device
        if not rows:
            return torch.zeros(0, dtype=torch.long, device=device), None
        return (torch.tensor(rows, dtype=torch.long, device=device),
                frames_to_float(torch.stack(faces).to(device)))

    def state(self) -> dict:
        return {"clips": {who: dict(c) for who, c in self.clips.items()},
                "rng": self.rng.get_state()}

    def load_state(self, state: dict) -> None:
        self.clips = {who: dict(c) for who, c in state["clips"].items()}
        self.rng.set_state(state["rng"])

    def add(self, identity: torch.Tensor, clip_id: list[str], faces: torch.Tensor) -> None:
        stored = frames_to_uint8(faces)
        for who, cid, f in zip(identity.tolist(), clip_id, stored, strict=True):
            person = self.clips.setdefault(who, {})
            person.pop(cid, None)  # re-inserting keeps the dict in recency order
            person[cid] = f
            while len(person) > self.per_identity:
                person.pop(next(iter(person)))


# --------------------------------------------------------------------------- losses
def balanced_bce(logits: torch.Tensor, target: torch.Tensor,
                 is_positive: torch.Tensor | None = None) -> torch.Tensor:
    """BCE where positive and negative pairs weigh the same, whatever their counts.

    `is_positive` tells the pair kinds apart when `target` is not the pair label (the
    confusion objective's target is 0.5 everywhere).
    """
    pos = target > 0.5 if is_positive is None else is_positive.bool()
    w = torch.where(pos, 0.5 / pos.sum().clamp(min=1), 0.5 / (~pos).sum().clamp(min=1))
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum()


def masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over rows whose target is known (>= 0); 0 when none is."""
    known = target >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], target[known])


def confusion_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the uniform distribution: minimal when A can't tell classes."""
    return -F.log_softmax(logits, dim=-1).mean(-1).mean()


# --------------------------------------------------------------------------- adversaries
@dataclass
class AdversaryOutput:
    """The adversary's own loss (what it minimises) and, for a matching adversary, its
    mean logit and target per pair, which the module monitors (D's accuracy and AUC)."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    target: torch.Tensor | None = None


class Adversary(nn.Module):
    """An adversary on h as the training step drives it: `observe` draws what it sees
    besides h, `forward` gives its loss; objectives read it through `confusion` and
    `dependence_target`."""

    def observe(self, batch, stage: str):
        raise NotImplementedError

    def forward(self, h: torch.Tensor, obs) -> AdversaryOutput:
        raise NotImplementedError

    def confusion(self, h: torch.Tensor, obs) -> torch.Tensor:
        """Minimal when the adversary cannot tell its classes apart on h."""
        raise NotImplementedError

    def dependence_target(self, obs) -> torch.Tensor:
        """[B, d] rows, one per batch clip (first), that h must become independent of."""
        raise NotImplementedError

    def remember(self, batch, stage: str) -> None:
        """Called once per batch, after its steps."""

    def memory_state(self) -> dict:
        """What the adversary keeps besides its parameters (banks, generators): a resumed
        run needs it to continue exactly."""
        return {}

    def load_memory_state(self, state: dict) -> None:
        """Restore `memory_state`."""


@dataclass
class FacePairs:
    """D's pairs (h row, face row, target) and the face embeddings [B + n, face_dim] they
    index: the batch clips' own faces, then banked faces of other clips."""

    h_idx: torch.Tensor
    f_idx: torch.Tensor
    target: torch.Tensor
    faces: torch.Tensor

    def detach(self) -> FacePairs:
        return FacePairs(self.h_idx, self.f_idx, self.target, self.faces.detach())


class FaceMatchAdversary(Adversary):
    """The label-free adversary: the face encoder, D(h, f), and the pairs D learns on.

    `face_encoder`: "cnn" trains with D; "identity" is frozen here and gets its pretrained
    weights from `fair_lightning.experiment` (`face_pretrain.identity_face_encoder`); "frozen" loads `checkpoint`. With `positive_faces=other_clip`
    the positives are faces of another clip of the same person, from a bank per stage
    (validation must not find training clips, nor the reverse). With `components` k > 0
    (a frozen encoder only), the embedding everything downstream sees (D, the dependence
    term, the erasure stage, the audit's `proxy`) is its k leading directions across people
    (`ProxyComponents`, fitted at the start of fit by `lightning.proxy_fit.ProxyComponentsFit`).
    """

    def __init__(self, h_dim: int, face_dim: int, hidden: int, *, heads: int = 1,
                 face_encoder: str = "cnn", checkpoint: str | None = None,
                 negatives_per_positive: int = 8, positive_faces: str = "own_clip",
                 components: int = 0, proxy_kind: str = "leading",
                 proxy_partners: tuple[str, ...] = ("voice",)):
        super().__init__()
        self.face_input = "faces"  # the Batch field the face encoder reads
        if face_encoder == "pretrained":
            self.face_encoder = PrecomputedFaceEncoder()
            self.face_input = "face_embedding"
            face_dim = PrecomputedFaceEncoder.dim
        elif face_encoder == "frozen":
            self.face_encoder = FaceEncoder.from_checkpoint(checkpoint, face_dim)
        elif face_encoder == "identity":
            self.face_encoder = FaceEncoder(face_dim).freeze()
        else:
            self.face_encoder = FaceEncoder(face_dim)
        self.components = None
        if components:
            if not self.face_encoder.frozen:
                raise ValueError("proxy components need a frozen face encoder (pretrained, "
                                 "identity or frozen): a trained one moves under them")
            self.components = ProxyComponents(face_dim, components, proxy_kind,
                                              tuple(proxy_partners))
            face_dim = self.components.out_dim
        self.discriminator = FaceMatchDiscriminator(h_dim, face_dim, hidden, heads=heads)
        self.negatives_per_positive = negatives_per_positive
        self.own_positives = positive_faces == "own_clip"
        self.face_banks = {s: FaceBank(seed=i) for i, s in enumerate(("train", "val", "test"))}

    @classmethod
    def from_config(cls, model, adversary) -> FaceMatchAdversary:
        return cls(model.fused_dim, model.face_dim, adversary.hidden_dim, heads=adversary.heads,
                   face_encoder=model.face_encoder, checkpoint=model.face_encoder_checkpoint,
                   negatives_per_positive=adversary.negatives_per_positive,
                   positive_faces=adversary.positive_faces,
                   components=model.get("face_proxy_components", 0),
                   proxy_kind=model.get("face_proxy", "leading"),
                   proxy_partners=tuple(model.get("face_proxy_partners", ["voice"])))

    def pairs(self, batch, stage: str):
        """(h_idx, f_idx, target) and the face frames they index [B + n, K, 3, H, W]."""
        h_idx, f_idx, target = sample_pairs(batch.identity, self.negatives_per_positive,
                                            own_positives=self.own_positives)
        frames = getattr(batch, self.face_input)
        if frames is None:
            raise ValueError("model.face_encoder=pretrained: the data holds no face descriptors "
                             "(preprocess with data.preprocess.face_embedding=dlib)")
        if not self.own_positives:
            rows, banked = self.face_banks[stage].lookup(batch.identity, batch.clip_id)
            if rows.numel():
                n, b = rows.numel(), len(batch)
                h_idx = torch.cat([rows, h_idx])
                f_idx = torch.cat([torch.arange(b, b + n, device=rows.device), f_idx])
                target = torch.cat([torch.ones(n, device=target.device), target])
                frames = torch.cat([frames, banked])
        return (h_idx, f_idx, target), frames

    def encoder_embed(self, batch) -> torch.Tensor:
        """The face encoder's own embedding of each clip's face frames (what the proxy
        components are fitted on)."""
        return self.face_encoder(getattr(batch, self.face_input))

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        f = self.face_encoder(frames)
        return f if self.components is None else self.components(f)

    def embed(self, batch) -> torch.Tensor:
        """The face proxy [B, face_dim] of each clip's own face frames."""
        return self._encode(getattr(batch, self.face_input))

    def observe(self, batch, stage: str) -> FacePairs:
        (h_idx, f_idx, target), frames = self.pairs(batch, stage)
        return FacePairs(h_idx, f_idx, target, self._encode(frames))

    def _head_logits(self, h: torch.Tensor, obs: FacePairs) -> torch.Tensor:
        return self.discriminator.head_logits(h[obs.h_idx], obs.faces[obs.f_idx])

    def forward(self, h: torch.Tensor, obs: FacePairs) -> AdversaryOutput:
        logits = self._head_logits(h, obs)
        loss = torch.stack([balanced_bce(lg, obs.target) for lg in logits]).mean()
        return AdversaryOutput(loss, logits.detach().mean(0), obs.target)

    def confusion(self, h: torch.Tensor, obs: FacePairs) -> torch.Tensor:
        half = torch.full_like(obs.target, 0.5)
        return torch.stack([balanced_bce(lg, half, is_positive=obs.target)
                            for lg in self._head_logits(h, obs)]).mean()

    def dependence_target(self, obs: FacePairs) -> torch.Tensor:
        return obs.faces.detach()

    def remember(self, batch, stage: str) -> None:
        if not self.own_positives:
            self.face_banks[stage].add(batch.identity, batch.clip_id, batch.faces)

    def memory_state(self) -> dict:
        return {stage: bank.state() for stage, bank in self.face_banks.items()}

    def load_memory_state(self, state: dict) -> None:
        for stage, bank in self.face_banks.items():
            bank.load_state(state[stage])


def one_hot_attributes(gender: torch.Tensor, ethnicity: torch.Tensor) -> torch.Tensor:
    """[B, 2 + 3] one-hot gender and ethnicity; an unknown value (-1) is an all-zero block."""
    return torch.cat([F.one_hot(gender.clamp(min=0).long(), 2) * (gender >= 0)[:, None],
                      F.one_hot(ethnicity.clamp(min=0).long(), 3) * (ethnicity >= 0)[:, None]],
                     dim=1).float()


@dataclass
class AttributeTargets:
    gender: torch.Tensor  # [B] long, -1 unknown
    ethnicity: torch.Tensor  # [B] long, -1 unknown

    def detach(self) -> AttributeTargets:
        return self


class LabelAdversary(Adversary):
    """The explicit-label baseline: A(h) predicts gender and ethnicity. The one adversary
    that reads `batch.sensitive`."""

    def __init__(self, h_dim: int, hidden: int):
        super().__init__()
        self.classifier = AttributeAdversary(h_dim, hidden)

    @classmethod
    def from_config(cls, model, adversary) -> LabelAdversary:
        return cls(model.fused_dim, adversary.hidden_dim)

    def observe(self, batch, stage: str) -> AttributeTargets:
        s = batch.sensitive
        return AttributeTargets(s.gender, s.ethnicity)

    def forward(self, h: torch.Tensor, obs: AttributeTargets) -> AdversaryOutput:
        g, e = self.classifier(h)
        return AdversaryOutput(masked_ce(g, obs.gender) + masked_ce(e, obs.ethnicity))

    def confusion(self, h: torch.Tensor, obs: AttributeTargets) -> torch.Tensor:
        g, e = self.classifier(h)
        return confusion_to_uniform(g) + confusion_to_uniform(e)

    def dependence_target(self, obs: AttributeTargets) -> torch.Tensor:
        return one_hot_attributes(obs.gender, obs.ethnicity)


# `adversary.method` -> class; "none" trains the scorer alone
ADVERSARIES: dict[str, type[Adversary] | None] = {
    "none": None, "indirect": FaceMatchAdversary, "label": LabelAdversary}
