"""The record schema: one record per clip, the same for every source.

Every source (synthetic, chalearn, manifest, ...) yields records with these fields; the
shard writer checks them, the collate function turns them into a `Batch`, and the audit
reads the sensitive attributes named here. Nothing else in the project lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
# sensitive attribute -> number of groups; a record holds the group index, or UNKNOWN
SENSITIVE = {"gender": 2, "ethnicity": 3}
UNKNOWN = -1


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "str", "array" (numpy, with dtype and ndim), "float" or "int" (scalars)
    doc: str
    dtype: str | None = None
    ndim: int | None = None


FIELDS = (
    Field("clip_id", "str", "unique clip name, e.g. J4GQm9j0JZ0.003"),
    Field("identity", "str", "the person: identity-disjoint splits and negatives use it"),
    Field("text", "array", "[S, Dt] sentence embeddings of the transcript", "float16", 2),
    Field("audio", "array", "[Ta, Da] acoustic feature frames", "float16", 2),
    Field("video", "array", "[Tv, 3, H, W] low-rate face track for the scorer", "uint8", 4),
    Field("faces", "array", "[K, 3, Hf, Wf] face frames for the face discriminator",
          "uint8", 4),
    Field("label", "float", "the hireability target, in [0, 1]"),
    Field("merit", "float", "synthetic ground truth; NaN where a source has none"),
    Field("gender", "int", "0/1, or -1 unknown; read only by probes, fairness metrics and "
          "the label baseline"),
    Field("ethnicity", "int", "0/1/2, or -1 unknown; read as gender"),
)
RECORD_KEYS = tuple(f.name for f in FIELDS)
# present only where a source computed them (raw sources with data.preprocess.face_embedding)
OPTIONAL_FIELDS = (
    Field("face_embedding", "array", "[K, E] pretrained face descriptors of the K `faces` "
          "frames (dlib's ResNet, E = 128)", "float16", 2),
)


def check_record(record: dict, where: str = "record") -> None:
    """Raise ValueError naming `where`, the clip and the field when a record does not follow
    the schema (missing field, wrong dtype or rank, attribute out of range)."""
    clip = record.get("clip_id", "?")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: record {clip!r} lacks keys {missing}")
    for f in FIELDS + tuple(o for o in OPTIONAL_FIELDS if o.name in record):
        v = record[f.name]
        bad = None
        if f.kind == "str" and (not isinstance(v, str) or not v):
            bad = f"a non-empty string, got {v!r}"
        elif f.kind == "array":
            if not isinstance(v, np.ndarray) or v.dtype != np.dtype(f.dtype) or v.ndim != f.ndim:
                got = (f"{v.dtype} with {v.ndim} dims" if isinstance(v, np.ndarray)
                       else type(v).__name__)
                bad = f"a {f.ndim}-d {f.dtype} numpy array, got {got}"
        elif f.kind == "float" and not isinstance(v, (float, np.floating)):
            bad = f"a float, got {type(v).__name__}"
        elif f.kind == "int":
            groups = SENSITIVE[f.name]
            if not isinstance(v, (int, np.integer)) or not UNKNOWN <= int(v) < groups:
                bad = f"an int in [-1, {groups}), got {v!r}"
        if bad:
            raise ValueError(f"{where}: record {clip!r}: field {f.name!r} must be {bad}")
