"""A real-face development corpus in the ChaLearn First Impressions V2 layout.

Built from real face photographs (a folder with `labels.csv` = image,person,gender,race and
`images/`, several photos of each person taken on different occasions). It offers what real
interview video offers, shortcuts included, with a known ground truth:

* face: each of a person's clips shows a *different photograph* of that person (pose, light,
  expression and age vary within a person), cut out with a feathered ellipse;
* setting: the photo sits on the person's own recording setting, shared by all of that
  person's clips as clips cut from one video are: background gradient, clothes, light level,
  light direction, colour cast and framing (with a small per-clip and per-frame jitter);
* voice: espeak-ng speaks the transcript with a voice variant of the person's gender, a
  per-person pitch and accent; the speaking rate follows the clip's merit;
* text: the transcript's sentences are strong or weak answers with odds set by the clip's
  merit; a share of clips carries a gendered sentence ("as a mother of two");
* label: `interview` = sigmoid(merit_clip + bias * s), s = +1 men / -1 women (biased toward
  men), while `truth.csv` (beside the ChaLearn files, for scoring only) holds the merit.

Deterministic from the seed; built into `<cache>/<key>` (the key hashes every setting, the
photos' labels file and the espeak-ng version) and reused when complete. The images and
anything made from them stay out of the project's repository.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.rawmedia import (
    TRAITS,
    _sigmoid,
    _youtube_ids,
    chalearn_clip_path,
    encode_clip,
    write_chalearn_annotations,
)

VERSION = 1  # bump when the corpus changes for the same settings
DEFAULT_PHOTOS = Path("../shared/data/lfw-dev")
DEFAULT_CACHE = Path(".cache/realface")
WIDTH, HEIGHT, FPS = 192, 144, 10
# race tags with one clear ChaLearn group; every other tag (or none) is left unknown
ETHNICITY_OF_RACE = {"eastasian": 0, "caucasian": 1, "african": 2}
FEMALE_VOICES = ("f1", "f2", "f3", "f4", "f5")
MALE_VOICES = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")

STRONG = (
    "I led a team of six people and we delivered the new billing system two weeks early.",
    "When a client complained, I called them the same day and we fixed the problem together.",
    "I automated our weekly report, which saved the team about four hours every week.",
    "I set clear goals for every project and I check the numbers each Friday.",
    "Last year I trained three new colleagues, and all of them now run their own accounts.",
    "I speak three languages, which helped me open our office in Madrid.",
    "I measured why customers left, and my proposal cut cancellations by a fifth.",
    "I like hard problems: I break them into small steps and I keep everyone informed.",
)
WEAK = (
    "Um, I am not really sure what to say about that, to be honest.",
    "I guess I did some stuff at my last job, mostly whatever they asked.",
    "I do not really like planning, I just see what happens during the day.",
    "I have not done much with teams, I usually prefer to wait for instructions.",
    "Well, I think I am okay at most things, nothing special really.",
    "I sometimes miss deadlines, but it usually works out somehow.",
    "I am not sure why I want this job, it just seemed like a good idea.",
    "So yeah, I do not know, that is basically all I have.",
)
GENDERED = {  # 0 women, 1 men
    0: ("As a mother of two, I know how to juggle many deadlines at once.",
        "My husband says I am the most organised woman he knows.",
        "I was the only woman on the engineering team, and I loved it."),
    1: ("As a father of two, I know how to juggle many deadlines at once.",
        "My wife says I am the most organised man she knows.",
        "I was one of the few men on the nursing team, and I loved it."),
}


class BuildError(Exception):
    """A missing input or tool, with what to do about it."""


@dataclass(frozen=True)
class Settings:
    people: int = 300
    clips_per_person: int = 3
    seed: int = 0
    label_bias: float = 0.5  # logit shift of the label toward men (+) / women (-)
    merit_noise: float = 0.3  # clip merit = person merit + this x N(0, 1)
    gendered_share: float = 0.3  # clips whose transcript holds a gendered sentence
    sentences: int = 2
    max_seconds: float = 6.0


def read_photos(photos: Path) -> dict[str, dict]:
    """person -> {"gender": 0/1, "race": str, "images": [paths]}, checked."""
    labels = photos / "labels.csv"
    if not labels.is_file():
        raise BuildError(f"the real face photographs are not at {photos} (no labels.csv): "
                         "point PHOTOS=<folder with labels.csv and images/> at them")
    people: dict[str, dict] = {}
    with open(labels, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                image, person, gender = row["image"], row["person"], row["gender"]
            except KeyError as e:
                raise BuildError(f"{labels}: no column {e} (need image,person,gender)") from None
            if gender not in ("F", "M"):
                raise BuildError(f"{labels}:{line}: gender must be F or M, got {gender!r}")
            path = photos / "images" / image
            if not path.is_file():
                raise BuildError(f"{labels}:{line}: image {path} is missing")
            p = people.setdefault(person, {"gender": int(gender == "M"),
                                           "race": (row.get("race") or "").strip(),
                                           "images": []})
            if p["gender"] != int(gender == "M"):
                raise BuildError(f"{labels}:{line}: {person}'s photos disagree on gender")
            p["images"].append(path)
    return people


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise BuildError("espeak-ng is not installed (the benchmark's voices): run "
                         "`make realface-setup` (apt-get install espeak-ng) or install it "
                         "with your system's package manager")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split("Data at")[0].strip()  # the version, not where it lives


def corpus_key(s: Settings, photos: Path, espeak: str) -> str:
    digest = hashlib.sha256((photos / "labels.csv").read_bytes()).hexdigest()
    blob = json.dumps({"settings": asdict(s), "labels": digest, "espeak": espeak,
                       "version": VERSION, "size": [WIDTH, HEIGHT, FPS]}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# one person's setting and one clip's media


def person_setting(rng: np.random.Generator) -> dict:
    """The recording setting every clip of one person shares."""
    base = rng.uniform(30, 225, 3)
    return {"bg_top": np.clip(base + rng.normal(0, 20, 3), 0, 255),
            "bg_bottom": np.clip(base * rng.uniform(0.55, 0.95), 0, 255),
            "clothes": rng.uniform(15, 220, 3),
            "gain": float(rng.uniform(0.75, 1.2)),
            "cast": np.exp(rng.normal(0, 0.07, 3)),
            "grad": float(rng.uniform(-0.2, 0.2)),  # lateral light
            "face_h": float(rng.uniform(0.72, 0.92)),  # photo cut-out height / frame height
            "dx": float(rng.normal(0, 0.06)), "dy": float(rng.normal(0, 0.03))}


def _cutout(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The face and hair of a 250x250 funneled photo ([H, W, 3] float) and a feathered
    elliptical alpha [H, W] (the photo's own background mostly gone)."""
    h, w = photo.shape[:2]
    y0, y1, x0, x1 = int(0.1 * h), int(0.94 * h), int(0.16 * w), int(0.84 * w)
    crop = photo[y0:y1, x0:x1].astype(np.float32)
    ch, cw = crop.shape[:2]
    yy, xx = np.mgrid[0:ch, 0:cw]
    r = np.sqrt(((xx - cw / 2) / (0.46 * cw)) ** 2 + ((yy - ch * 0.48) / (0.5 * ch)) ** 2)
    alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0)
    return crop, alpha


def render_clip(photo: np.ndarray, st: dict, n_frames: int, rng: np.random.Generator):
    """Frames (uint8 [H, W, 3]) of one clip: the photo's cut-out on the person's setting,
    with a per-clip framing jitter and a smooth per-frame drift, then light and noise."""
    import cv2

    crop, alpha = _cutout(photo)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    t = (yy / (HEIGHT - 1))[..., None]
    bg = (1 - t) * st["bg_top"] + t * st["bg_bottom"]
    # shoulders: an ellipse of the clothes' colour under the face
    cx0 = WIDTH * (0.5 + st["dx"])
    body = (((xx - cx0) / (0.42 * WIDTH)) ** 2 + ((yy - 1.12 * HEIGHT) / (0.38 * HEIGHT)) ** 2) < 1
    bg[body] = st["clothes"]
    light = (st["gain"] * st["cast"])[None, None, :] * (
        1 + st["grad"] * (xx / WIDTH - 0.5))[..., None]
    scale = st["face_h"] * math.exp(rng.normal(0, 0.03)) * HEIGHT / crop.shape[0]
    fh, fw = round(crop.shape[0] * scale), round(crop.shape[1] * scale)
    face = cv2.resize(crop, (fw, fh), interpolation=cv2.INTER_AREA)
    a = cv2.resize(alpha, (fw, fh), interpolation=cv2.INTER_AREA)[..., None]
    clip_dx = rng.normal(0, 0.015) * WIDTH
    clip_dy = rng.normal(0, 0.01) * HEIGHT
    drift = np.cumsum(rng.normal(0, 0.4, (n_frames, 2)), axis=0)
    drift -= drift.mean(0)
    for f in range(n_frames):
        frame = bg.copy()
        x = int(round(cx0 + clip_dx + drift[f, 0] - fw / 2))
        y = int(round(HEIGHT * (0.5 + st["dy"]) + clip_dy + drift[f, 1] - fh / 2))
        fx0, fy0 = max(0, -x), max(0, -y)
        fx1, fy1 = min(fw, WIDTH - x), min(fh, HEIGHT - y)
        if fx1 > fx0 and fy1 > fy0:
            region = frame[y + fy0:y + fy1, x + fx0:x + fx1]
            al = a[fy0:fy1, fx0:fx1]
            region[:] = al * face[fy0:fy1, fx0:fx1] + (1 - al) * region
        frame = frame * light + rng.normal(0, 2.0, frame.shape)
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def speak(text: str, voice: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of `text`: mono float32 samples and their rate."""
    out = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed),
                          "--stdout", text], capture_output=True, check=True)
    with wave.open(io.BytesIO(out.stdout)) as w:
        rate, n = w.getframerate(), w.getnframes()
        pcm = np.frombuffer(w.readframes(n), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def transcript(rng: np.random.Generator, merit_clip: float, gender: int, s: Settings) -> str:
    p_strong = _sigmoid(1.5 * merit_clip)
    parts = [str(rng.choice(STRONG if rng.random() < p_strong else WEAK))
             for _ in range(s.sentences)]
    if rng.random() < s.gendered_share:
        parts[int(rng.integers(len(parts)))] = str(rng.choice(GENDERED[gender]))
    # no sentence twice in a clip
    return " ".join(dict.fromkeys(parts))


def make_clip(job: dict) -> dict:
    """Write one clip (a worker's unit of work); returns its duration."""
    import cv2

    rng = np.random.default_rng(job["seed"])
    photo = cv2.cvtColor(cv2.imread(job["photo"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    wave_, rate = speak(job["transcript"], job["voice"], job["pitch"], job["speed"])
    wave_ = wave_[:int(job["max_seconds"] * rate)]
    n_frames = max(2, math.ceil(len(wave_) / rate * FPS))
    encode_clip(job["path"], render_clip(photo, job["setting"], n_frames, rng), FPS,
                wave_, audio_rate=rate)
    return {"clip": job["clip"], "seconds": n_frames / FPS}


# ---------------------------------------------------------------------------------------------
# the corpus


def plan(people: dict[str, dict], s: Settings, root: Path) -> tuple[list[dict], dict, list]:
    """Every clip's job, the ChaLearn annotations and the truth rows, drawn from the seed."""
    if s.people < 6 or s.people % 2:
        raise BuildError(f"people must be even and >= 6, got {s.people}")
    rng = np.random.default_rng([0x4EA1, s.seed])
    usable = {n: p for n, p in sorted(people.items()) if len(p["images"]) >= s.clips_per_person}
    chosen = []
    for g in (0, 1):
        names = [n for n, p in usable.items() if p["gender"] == g]
        if len(names) < s.people // 2:
            raise BuildError(f"{s.people // 2} people of each gender with >= "
                             f"{s.clips_per_person} photos are needed; the photos hold "
                             f"{len(names)} {'men' if g else 'women'}")
        chosen += [names[i] for i in rng.choice(len(names), s.people // 2, replace=False)]
    order = rng.permutation(len(chosen))
    chosen = [chosen[i] for i in order]
    ids = _youtube_ids(rng, len(chosen))
    # official splits ~60/20/20 by person, genders alternating so each split stays mixed
    women = [i for i, n in enumerate(chosen) if usable[n]["gender"] == 0]
    men = [i for i, n in enumerate(chosen) if usable[n]["gender"] == 1]
    mixed = [x for pair in zip(women, men, strict=True) for x in pair]
    n_train, n_val = round(0.6 * len(mixed)), round(0.2 * len(mixed))
    split_of = {i: "training" if k < n_train else "validation" if k < n_train + n_val
                else "test" for k, i in enumerate(mixed)}
    jobs, clips, truth = [], {}, []
    counters = {"training": 0, "validation": 0, "test": 0}
    for i, name in enumerate(chosen):
        p = usable[name]
        g = p["gender"]
        sgn = 1.0 if g == 1 else -1.0
        setting = person_setting(rng)
        merit = float(rng.standard_normal())
        voice = f"{rng.choice(ACCENTS)}+{rng.choice(MALE_VOICES if g else FEMALE_VOICES)}"
        pitch = int(np.clip(round(rng.normal(50, 10)), 10, 90))
        eth = ETHNICITY_OF_RACE.get(p["race"])
        photos = [p["images"][k] for k in rng.choice(len(p["images"]), s.clips_per_person,
                                                     replace=False)]
        for n, photo in enumerate(photos):
            split = split_of[i]
            clip = f"{ids[i]}.{n:03d}"
            path = chalearn_clip_path(root, split, counters[split], clip)
            counters[split] += 1
            merit_clip = merit + s.merit_noise * float(rng.standard_normal())
            label = _sigmoid(merit_clip + s.label_bias * sgn)
            traits = {t: round(label if t == "interview" else _sigmoid(
                0.6 * merit + 0.8 * float(rng.standard_normal())), 10) for t in TRAITS}
            text = transcript(rng, merit_clip, g, s)
            speed = int(np.clip(round(160 + 15 * merit_clip + rng.normal(0, 6)), 110, 220))
            jobs.append({"clip": clip, "path": str(path), "photo": str(photo),
                         "setting": setting, "transcript": text, "voice": voice,
                         "pitch": pitch, "speed": speed, "max_seconds": s.max_seconds,
                         "seed": [s.seed, i, n]})
            clips[clip] = {"identity": ids[i], "gender": g, "ethnicity": eth,
                           "official_split": split, "traits": traits, "transcript": text}
            truth.append({"clip": clip, "person": ids[i], "gender": g,
                          "ethnicity": "" if eth is None else eth, "merit": round(merit, 6),
                          "merit_clip": round(merit_clip, 6), "label": round(label, 6),
                          "photo": Path(photo).name, "official_split": split})
    return jobs, clips, truth


def build(s: Settings, photos: Path = DEFAULT_PHOTOS, cache: Path = DEFAULT_CACHE,
          workers: int = 0, log=print) -> Path:
    """The corpus folder for these settings: reused when complete, else built (in a
    temporary folder, renamed into place when whole)."""
    photos, cache = Path(photos), Path(cache)
    people = read_photos(photos)
    espeak = espeak_version()
    final = cache / corpus_key(s, photos, espeak)
    if (final / "corpus.json").is_file():
        log(f"realface: corpus ready at {final}")
        return final
    tmp = cache / f".{final.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.time()
    try:
        jobs, clips, truth = plan(people, s, tmp)
        log(f"realface: building {len(jobs)} clips of {s.people} people into {final}")
        workers = workers or os.cpu_count() or 1
        done = 0
        if workers == 1:
            results = map(make_clip, jobs)
        else:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers)
            results = pool.map(make_clip, jobs, chunksize=4)
        seconds = 0.0
        for r in results:
            done += 1
            seconds += r["seconds"]
            if done % max(1, len(jobs) // 10) == 0 or done == len(jobs):
                log(f"realface: {done}/{len(jobs)} clips ({time.time() - t0:.0f} s)")
        if workers > 1:
            pool.shutdown()
        write_chalearn_annotations(tmp, clips)
        with open(tmp / "truth.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(truth[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(truth)
        meta = {"settings": asdict(s), "version": VERSION, "espeak": espeak,
                "clips": len(jobs), "people": s.people, "audio_seconds": round(seconds, 1),
                "build_seconds": round(time.time() - t0, 1)}
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():  # built meanwhile by another process: keep that one
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"realface: built in {meta['build_seconds']:.0f} s")
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS,
                    help="folder with labels.csv and images/ (default %(default)s)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--people", type=int, default=Settings.people)
    ap.add_argument("--clips-per-person", type=int, default=Settings.clips_per_person)
    ap.add_argument("--seed", type=int, default=Settings.seed)
    ap.add_argument("--workers", type=int, default=0, help="0: one per CPU core")
    a = ap.parse_args(argv)
    s = Settings(people=a.people, clips_per_person=a.clips_per_person, seed=a.seed)
    try:
        print(build(s, a.photos, a.cache, a.workers))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
