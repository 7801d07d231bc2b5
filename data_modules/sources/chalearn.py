"""`data.source: chalearn`: ChaLearn First Impressions V2, from the official download.

Layout under `data.chalearn.root` (any nesting: the archives unzip differently):

    <YouTubeID>.<NNN>.mp4                 the clips (the ID may hold '-' and '_')
    annotation_{training,validation,test}.pkl     trait -> {"<clip>.mp4": score in [0, 1]}
    transcription_{training,validation,test}.pkl  "<clip>.mp4" -> transcript
    eth_gender_annotations_{dev,test}.csv  VideoName;YouTubeID;Ethnicity;Gender
        Ethnicity 1 Asian, 2 Caucasian, 3 African-American (blank: unknown);
        Gender 1 male, 2 female

The pickles are Python 2 pickles; they are read with a loader that runs no code. The
person is the YouTube ID. The official splits share people across train and test, so the
default splits are identity-disjoint (`data.chalearn.splits: identity`).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

from data_modules.errors import CorpusError
from data_modules.preprocess import ClipEntry, Skipped
from data_modules.safe_pickle import load_pickle
from data_modules.schema import UNKNOWN
from data_modules.sources.raw import RawSource

log = logging.getLogger(__name__)

CLIP_NAME = re.compile(r"^(?P<youtube_id>[A-Za-z0-9_-]+)\.(?P<n>\d{3})\.mp4$")
OFFICIAL_SPLITS = {"training": "train", "validation": "val", "test": "test"}
TRAITS = ("interview", "extraversion", "neuroticism", "agreeableness", "conscientiousness",
          "openness")
# CSV codes -> schema group indices (gender: 0 woman, 1 man, as in every source)
GENDER_CODES = {"1": 1, "2": 0}
ETHNICITY_CODES = {"1": 0, "2": 1, "3": 2}  # Asian, Caucasian, African-American
ETHNICITY_NAMES = ("Asian", "Caucasian", "African-American")

LAYOUT_HELP = """Put the ChaLearn First Impressions V2 download (obtained from its organisers; its
licence does not allow redistribution, so this project never downloads it) under one folder
and set data.chalearn.root to it. Any nesting works; the folder must hold:
  <YouTubeID>.<NNN>.mp4 clips, annotation_{training,validation,test}.pkl,
  transcription_{training,validation,test}.pkl, eth_gender_annotations_{dev,test}.csv"""


def _find(root: Path, name: str) -> Path | None:
    hits = sorted(root.rglob(name))
    if len(hits) > 1:
        raise CorpusError(f"{root}: {name} found {len(hits)} times ({hits[0]}, {hits[1]}); "
                          "keep one copy")
    return hits[0] if hits else None


def _clip_key(name) -> str:
    return str(name)[:-4] if str(name).endswith(".mp4") else str(name)


def read_annotations(path: Path, target: str) -> dict[str, float]:
    """clip -> the target trait's score, from one annotation pickle (checked)."""
    data = load_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CorpusError(f"{path}: expected a dict trait -> {{clip: score}}, got "
                          f"{type(data).__name__}")
    if target not in data:
        raise CorpusError(f"{path}: no trait {target!r}; it has {sorted(map(str, data))}")
    out = {}
    for clip, score in data[target].items():
        if not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0 \
                or math.isnan(float(score)):
            raise CorpusError(f"{path}: {target} score of {clip!r} must be a number in [0, 1], "
                              f"got {score!r}")
        out[_clip_key(clip)] = float(score)
    return out


def read_transcripts(path: Path) -> dict[str, str]:
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: expected a dict clip -> transcript, got {type(data).__name__}")
    out = {}
    for clip, text in data.items():
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise CorpusError(f"{path}: transcript of {clip!r} must be a string, got "
                              f"{type(text).__name__}")
        out[_clip_key(clip)] = text
    return out


def read_attributes(path: Path) -> dict[str, tuple[int, int]]:
    """clip -> (gender, ethnicity) group indices from an eth_gender_annotations CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read: {e}") from None
    rows = csv.DictReader(text.splitlines(), delimiter=";")
    need = {"VideoName", "Ethnicity", "Gender"}
    if rows.fieldnames is None or not need <= set(rows.fieldnames):
        raise CorpusError(f"{path}: header must hold {sorted(need)} (';'-separated), got "
                          f"{rows.fieldnames}")
    out = {}
    for line, row in enumerate(rows, start=2):
        g, e = (row["Gender"] or "").strip(), (row["Ethnicity"] or "").strip()
        if g not in GENDER_CODES:
            raise CorpusError(f"{path}:{line}: unknown Gender code {g!r} "
                              "(1 male, 2 female)")
        if e and e not in ETHNICITY_CODES:
            raise CorpusError(f"{path}:{line}: unknown Ethnicity code {e!r} "
                              "(1 Asian, 2 Caucasian, 3 African-American, or blank: unknown)")
        out[_clip_key(row["VideoName"].strip())] = (GENDER_CODES[g],
                                                    ETHNICITY_CODES.get(e, UNKNOWN))
    return out


class ChalearnSource(RawSource):
    name = "chalearn"

    def corpus(self) -> Path:
        root = self.cfg.chalearn.root
        if not root or not Path(root).expanduser().is_dir():
            raise CorpusError(f"data.chalearn.root: {root!r} is not a folder.\n{LAYOUT_HELP}")
        return Path(root).expanduser()

    def split_settings(self) -> dict:
        c = self.cfg.chalearn
        return {"mode": c.splits, "fractions": list(c.split_fractions), "seed": int(c.split_seed),
                "target": c.target}

    def scan(self) -> tuple[list[ClipEntry], list[Skipped]]:
        root = self.corpus()
        files: dict[str, Path] = {}
        odd = []
        for path in sorted(root.rglob("*.mp4")):
            m = CLIP_NAME.match(path.name)
            if not m:
                odd.append(path)
                continue
            key = _clip_key(path.name)
            if key in files:
                raise CorpusError(f"clip {key} found twice: {files[key]} and {path}")
            files[key] = path
        if odd:
            log.warning("%s: %d mp4 files do not match <YouTubeID>.<NNN>.mp4 and are ignored "
                        "(e.g. %s)", root, len(odd), odd[0])
        labels: dict[str, tuple[float, str]] = {}
        texts: dict[str, str] = {}
        found_any = False
        for official, split in OFFICIAL_SPLITS.items():
            ann = _find(root, f"annotation_{official}.pkl")
            if ann is None:
                log.warning("%s: annotation_%s.pkl not found; its clips are not used", root,
                            official)
                continue
            found_any = True
            for clip, score in read_annotations(ann, self.cfg.chalearn.target).items():
                labels[clip] = (score, split)
            tr = _find(root, f"transcription_{official}.pkl")
            if tr is None:
                raise CorpusError(f"{root}: transcription_{official}.pkl not found (it comes "
                                  f"with annotation_{official}.pkl).\n{LAYOUT_HELP}")
            texts.update(read_transcripts(tr))
        if not found_any:
            raise CorpusError(f"{root}: no annotation_*.pkl found.\n{LAYOUT_HELP}")
        attributes: dict[str, tuple[int, int]] = {}
        for part in ("dev", "test"):
            path = _find(root, f"eth_gender_annotations_{part}.csv")
            if path is None:
                log.warning("%s: eth_gender_annotations_%s.csv not found; gender and ethnicity "
                            "of its clips are unknown (probes and fairness metrics skip them)",
                            root, part)
                continue
            attributes.update(read_attributes(path))

        entries, skipped = [], []
        for clip in sorted(labels):
            score, split = labels[clip]
            if clip not in files:
                skipped.append(Skipped(clip, "missing_file", "annotated but no video under the root"))
            elif clip not in texts:
                skipped.append(Skipped(clip, "no_transcript", "not in the transcription pickle"))
            elif not texts[clip].strip():
                skipped.append(Skipped(clip, "empty_transcript", "blank in the transcription pickle"))
            else:
                g, e = attributes.get(clip, (UNKNOWN, UNKNOWN))
                entries.append(ClipEntry(
                    clip_id=clip, identity=CLIP_NAME.match(clip + ".mp4")["youtube_id"],
                    path=str(files[clip]), transcript=texts[clip], label=score, gender=g,
                    ethnicity=e, official_split=split))
        for clip in sorted(set(files) - set(labels)):
            skipped.append(Skipped(clip, "no_annotation", str(files[clip])))
        return entries, skipped
