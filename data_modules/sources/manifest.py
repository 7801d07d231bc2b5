"""`data.source: manifest`: your own interview clips, listed in a CSV.

    clip,person,transcript,label,gender,ethnicity
    clips/ann/q1.mp4,ann,"I led the migration of ...",0.72,female,1
    clips/bob/q1.mp4,bob,transcripts/bob_q1.txt,0.40,male,

* clip: the video file, relative to the CSV's folder (or absolute).
* person: who speaks; splits never share a person, and probes attack people too.
* transcript: the text itself, or a `.txt` file (relative to the CSV's folder), UTF-8.
* label: the hireability target, a number in [0, 1].
* gender (optional): female / male (or 0 / 1); empty = unknown.
* ethnicity (optional): a group index 0, 1 or 2; empty = unknown.
Gender and ethnicity are read only by the probes, the fairness metrics and the
`label_adversary` experiment; the label-free experiments never see them.

Scoring new clips (`fair-predict`) needs clip, person and transcript only: a label, gender
or ethnicity column there is never read.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from data_modules.errors import CorpusError
from data_modules.preprocess import ClipEntry, Skipped
from data_modules.schema import SENSITIVE, UNKNOWN
from data_modules.sources.raw import RawSource

REQUIRED = ("clip", "person", "transcript", "label")
SCORING_REQUIRED = ("clip", "person", "transcript")
GENDER_VALUES = {"female": 0, "f": 0, "0": 0, "male": 1, "m": 1, "1": 1, "": UNKNOWN}


def _transcript(value: str, base: Path, clip_id: str) -> str | Skipped:
    if "\n" in value or not value.strip().lower().endswith(".txt"):
        return value
    path = Path(value.strip())
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        return Skipped(clip_id, "transcript_missing", str(path))
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return Skipped(clip_id, "transcript_not_utf8", f"{path}: byte {e.start}")


class ManifestSource(RawSource):
    name = "manifest"

    def __init__(self, data_cfg, scoring: bool = False):
        super().__init__(data_cfg)
        self.scoring = scoring  # clips to score: no label or attribute is read

    def corpus(self) -> Path:
        path = self.cfg.manifest.path
        if not path or not Path(path).expanduser().is_file():
            raise CorpusError(
                f"data.manifest.path: {path!r} is not a file. Write a CSV with the columns "
                f"{', '.join(REQUIRED)}[, gender, ethnicity], one row per clip (docs/data.md, "
                "'Your own data').")
        return Path(path).expanduser()

    def split_settings(self) -> dict:
        m = self.cfg.manifest
        return {"mode": "identity", "fractions": list(m.split_fractions),
                "seed": int(m.split_seed)}

    def scan(self) -> tuple[list[ClipEntry], list[Skipped]]:
        path = self.corpus()
        base = path.parent
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise CorpusError(f"{path}: cannot read as UTF-8 text: {e}") from None
        rows = csv.DictReader(text.splitlines(keepends=True))
        header = [h.strip() for h in rows.fieldnames or []]
        missing = [c for c in (SCORING_REQUIRED if self.scoring else REQUIRED)
                   if c not in header]
        if missing:
            raise CorpusError(f"{path}: missing column(s) {missing}; the header is {header}")
        rows.fieldnames = header
        entries, skipped, seen = [], [], {}
        for line, row in enumerate(rows, start=2):
            where = f"{path}:{line}"
            if None in row:
                raise CorpusError(f"{where}: more fields than columns")
            clip, person = (row["clip"] or "").strip(), (row["person"] or "").strip()
            if not clip or not person:
                raise CorpusError(f"{where}: 'clip' and 'person' must not be empty")
            clip_path = Path(clip) if Path(clip).is_absolute() else base / clip
            clip_id = Path(clip).with_suffix("").as_posix().strip("/").replace("/", "__")
            if clip_id in seen:
                raise CorpusError(f"{where}: clip {clip!r} is listed again (first on line "
                                  f"{seen[clip_id]})")
            seen[clip_id] = line
            transcript = _transcript(row["transcript"] or "", base, clip_id)
            if self.scoring:
                entries_or_skip(entries, skipped, clip_id, person, clip_path, transcript,
                                where, math.nan, UNKNOWN, UNKNOWN)
                continue
            try:
                label = float(row["label"])
            except (TypeError, ValueError):
                raise CorpusError(f"{where}: label {row['label']!r} is not a number") from None
            if math.isnan(label) or not 0.0 <= label <= 1.0:
                raise CorpusError(f"{where}: label {label} must lie in [0, 1] (rescale the "
                                  "scores)")
            g = (row.get("gender") or "").strip().lower()
            if g not in GENDER_VALUES:
                raise CorpusError(f"{where}: gender {row['gender']!r} must be female, male, 0, "
                                  "1 or empty")
            e = (row.get("ethnicity") or "").strip()
            if e and e not in {str(i) for i in range(SENSITIVE["ethnicity"])}:
                raise CorpusError(f"{where}: ethnicity {e!r} must be a group index 0-"
                                  f"{SENSITIVE['ethnicity'] - 1} or empty")
            entries_or_skip(entries, skipped, clip_id, person, clip_path, transcript, where,
                            label, GENDER_VALUES[g], int(e) if e else UNKNOWN)
        return entries, skipped


def entries_or_skip(entries: list, skipped: list, clip_id: str, person: str, clip_path: Path,
                    transcript: str | Skipped, where: str, label: float, gender: int,
                    ethnicity: int) -> None:
    """A listed clip to its entry, or to a counted skip with its reason."""
    if isinstance(transcript, Skipped):
        skipped.append(transcript)
    elif not clip_path.is_file():
        skipped.append(Skipped(clip_id, "missing_file", str(clip_path)))
    elif not transcript.strip():
        skipped.append(Skipped(clip_id, "empty_transcript", where))
    else:
        entries.append(ClipEntry(clip_id=clip_id, identity=person, path=str(clip_path),
                                 transcript=transcript, label=label, gender=gender,
                                 ethnicity=ethnicity))
