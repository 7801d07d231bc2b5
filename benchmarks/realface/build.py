"""A real-face development corpus in the ChaLearn First Impressions V2 layout.

Built from real face photographs (a folder with `labels.csv` = image,person,gender,race and
`images/`), one population of POPULATIONS: `lfw` (lfw-dev: mostly white public figures,
several photos each) or `fairface` (fairface-dev: one photo each, seven race groups, of which
ChaLearn's three are drawn, equally by gender and group). It offers what real interview video
offers, shortcuts included, with a known ground truth:

* face: each of a person's clips shows a *different photograph* of that person while they
  last (pose, light, expression and age vary within a person), else the same photograph
  again with its own per-clip jitter; cut out with a feathered ellipse;
* setting: the photo sits on the person's own recording setting, shared by all of that
  person's clips as clips cut from one video are: background gradient, clothes, light level,
  light direction, colour cast and framing (with a small per-clip and per-frame jitter);
* voice: espeak-ng speaks the transcript with a voice variant of the person's gender and an
  accent; the person's pitch is drawn around their gender's centre with the spread (and the
  small overlap) of real speakers' mean F0 (men ~120 Hz, women ~205 Hz); the speaking rate
  follows the clip's merit;
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
from dataclasses import asdict, dataclass, replace
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

VERSION = 2  # bump when the corpus changes for the same settings
DEFAULT_CACHE = Path(".cache/realface")
WIDTH, HEIGHT, FPS = 192, 144, 10
# race tags with one clear ChaLearn group; every other tag (or none) is left unknown
ETHNICITY_OF_RACE = {"eastasian": 0, "caucasian": 1, "african": 2}
RACE_OF_ETHNICITY = {v: k for k, v in ETHNICITY_OF_RACE.items()}
FEMALE_VOICES = ("f1", "f2", "f3", "f4", "f5")
MALE_VOICES = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
# espeak-ng 1.51 ignores a variant after the bare "en-gb" (every "en-gb+f1" spoke with the
# default male voice); these five honour it (test_every_accent_honours_the_voice_variant)
ACCENTS = ("en-us", "en-gb-x-gbclan", "en-gb-scotland", "en-029", "en-gb-x-rp")

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
    # gender: equal women and men | gender_ethnicity: equal in each of ChaLearn's 3 groups
    strata: str = "gender"
    framing: str = "funneled"  # where the face sits in the photos: a key of FRAMING
    # espeak-ng pitch (0-99) of a person: N(centre of their gender, sd). Over the variants'
    # own base F0 (~175-205 Hz female, ~90-105 Hz male at 50) this gives per-person mean F0
    # of about 205 +- 25 Hz and 120 +- 15 Hz, as adult speakers' (overlap of a few %)
    pitch_female: float = 56.0
    pitch_male: float = 70.0
    pitch_sd: float = 11.0
    label_bias: float = 0.5  # logit shift of the label toward men (+) / women (-)
    merit_noise: float = 0.3  # clip merit = person merit + this x N(0, 1)
    gendered_share: float = 0.3  # clips whose transcript holds a gendered sentence
    sentences: int = 2
    max_seconds: float = 6.0


@dataclass(frozen=True)
class Population:
    photos: Path  # default folder of the photographs (PHOTOS overrides it)
    settings: Settings  # the corpus drawn from them by default


POPULATIONS = {
    "lfw": Population(Path("../shared/data/lfw-dev"), Settings()),
    # 100 women and 100 men in each of eastasian, caucasian and african: the test split holds
    # about 40 people a group; FairFace's tight crops fill the photo with the face
    "fairface": Population(Path("../shared/data/fairface-dev"),
                           Settings(people=600, strata="gender_ethnicity", framing="tight")),
}
DEFAULT_PHOTOS = POPULATIONS["lfw"].photos

# framing -> (the photo's box kept as the cut-out: y0, y1, x0, x1 as shares of its size;
# the cut-out's height in the frame: low, high share of the frame's height)
FRAMING = {
    "funneled": ((0.10, 0.94, 0.16, 0.84), (0.72, 0.92)),  # LFW: the face in the centre third
    "tight": ((0.0, 1.0, 0.04, 0.96), (0.58, 0.74)),  # FairFace: the face fills the crop
}


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


def person_setting(rng: np.random.Generator, framing: str = "funneled") -> dict:
    """The recording setting every clip of one person shares."""
    face_h = FRAMING[framing][1]
    base = rng.uniform(30, 225, 3)
    return {"bg_top": np.clip(base + rng.normal(0, 20, 3), 0, 255),
            "bg_bottom": np.clip(base * rng.uniform(0.55, 0.95), 0, 255),
            "clothes": rng.uniform(15, 220, 3),
            "gain": float(rng.uniform(0.75, 1.2)),
            "cast": np.exp(rng.normal(0, 0.07, 3)),
            "grad": float(rng.uniform(-0.2, 0.2)),  # lateral light
            "face_h": float(rng.uniform(*face_h)),  # photo cut-out height / frame height
            "box": FRAMING[framing][0],
            "dx": float(rng.normal(0, 0.06)), "dy": float(rng.normal(0, 0.03))}


def _cutout(photo: np.ndarray, box: tuple[float, float, float, float]
            ) -> tuple[np.ndarray, np.ndarray]:
    """The face and hair inside `box` (shares of the photo's height and width) of a photo
    ([H, W, 3] float) and a feathered elliptical alpha [H, W] (the photo's own background
    mostly gone)."""
    h, w = photo.shape[:2]
    y0, y1, x0, x1 = int(box[0] * h), int(box[1] * h), int(box[2] * w), int(box[3] * w)
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

    crop, alpha = _cutout(photo, st["box"])
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


def strata_of(s: Settings) -> list[tuple[int, int | None]]:
    """The (gender, ethnicity) cells that each get an equal share of the people; ethnicity
    None: any (or unknown)."""
    if s.strata == "gender":
        return [(0, None), (1, None)]
    if s.strata == "gender_ethnicity":
        return [(g, e) for e in sorted(set(ETHNICITY_OF_RACE.values())) for g in (0, 1)]
    raise BuildError(f"strata must be gender or gender_ethnicity, got {s.strata!r}")


def choose_people(people: dict[str, dict], s: Settings,
                  rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """The people drawn, in a random order, and the order that deals them to the official
    splits: the strata taken in turn, so that each split holds every cell alike."""
    cells = strata_of(s)
    if s.people < 6 or s.people % len(cells):  # 6: someone in each official split
        raise BuildError(f"people must be a multiple of {len(cells)} (one share per cell of "
                         f"{s.strata}) and >= 6, got {s.people}")
    per_cell = s.people // len(cells)
    chosen = []
    for g, e in cells:
        names = [n for n, p in sorted(people.items()) if p["gender"] == g
                 and (e is None or ETHNICITY_OF_RACE.get(p["race"]) == e)]
        if len(names) < per_cell:
            who = ("men" if g else "women") + ("" if e is None else
                                               f" of group {RACE_OF_ETHNICITY[e]}")
            raise BuildError(f"{per_cell} people of each "
                             f"{'gender' if e is None else 'gender and group'} are needed; "
                             f"the photos hold {len(names)} {who}")
        chosen += [names[i] for i in rng.choice(len(names), per_cell, replace=False)]
    order = rng.permutation(len(chosen))
    chosen = [chosen[i] for i in order]

    def cell(name: str) -> int:
        p = people[name]
        e = ETHNICITY_OF_RACE.get(p["race"])
        return cells.index((p["gender"], None if cells[0][1] is None else e))

    members = [[i for i, n in enumerate(chosen) if cell(n) == c] for c in range(len(cells))]
    dealt = [x for group in zip(*members, strict=True) for x in group]
    return chosen, dealt


def clip_photos(images: list[Path], k: int, rng: np.random.Generator) -> list[Path]:
    """A person's k clips' photos: distinct while they last, then again in the same order
    (one photo: the same one in every clip)."""
    if len(images) >= k:
        return [images[i] for i in rng.choice(len(images), k, replace=False)]
    order = rng.permutation(len(images))
    return [images[order[n % len(images)]] for n in range(k)]


def voice_pitch(rng: np.random.Generator, gender: int, s: Settings) -> int:
    centre = s.pitch_male if gender == 1 else s.pitch_female
    return int(np.clip(round(rng.normal(centre, s.pitch_sd)), 0, 99))


def plan(people: dict[str, dict], s: Settings, root: Path) -> tuple[list[dict], dict, list]:
    """Every clip's job, the ChaLearn annotations and the truth rows, drawn from the seed."""
    if s.framing not in FRAMING:
        raise BuildError(f"framing must be one of {', '.join(FRAMING)}, got {s.framing!r}")
    rng = np.random.default_rng([0x4EA1, s.seed])
    chosen, mixed = choose_people(people, s, rng)
    ids = _youtube_ids(rng, len(chosen))
    # official splits ~60/20/20 by person, the strata dealt in turn so each split stays mixed
    n_train, n_val = round(0.6 * len(mixed)), round(0.2 * len(mixed))
    split_of = {i: "training" if k < n_train else "validation" if k < n_train + n_val
                else "test" for k, i in enumerate(mixed)}
    jobs, clips, truth = [], {}, []
    counters = {"training": 0, "validation": 0, "test": 0}
    for i, name in enumerate(chosen):
        p = people[name]
        g = p["gender"]
        sgn = 1.0 if g == 1 else -1.0
        setting = person_setting(rng, s.framing)
        merit = float(rng.standard_normal())
        voice = f"{rng.choice(ACCENTS)}+{rng.choice(MALE_VOICES if g else FEMALE_VOICES)}"
        pitch = voice_pitch(rng, g, s)
        eth = ETHNICITY_OF_RACE.get(p["race"])
        photos = clip_photos(p["images"], s.clips_per_person, rng)
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
                          "photo": Path(photo).name, "voice": voice, "pitch": pitch,
                          "official_split": split})
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


def add_population_arguments(ap: argparse.ArgumentParser, more: tuple[str, ...] = ()) -> None:
    ap.add_argument("--population", choices=sorted(POPULATIONS) + list(more), default="lfw",
                    help="which photographs and how people are drawn from them (default "
                    "%(default)s)")
    ap.add_argument("--photos", type=Path, default=None,
                    help="folder with labels.csv and images/ (default: the population's, "
                    + ", ".join(f"{k} {v.photos}" for k, v in POPULATIONS.items()) + ")")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--people", type=int, default=None,
                    help="people drawn (default: the population's, "
                    + ", ".join(f"{k} {v.settings.people}" for k, v in POPULATIONS.items())
                    + ")")


def population_settings(a: argparse.Namespace, **more) -> tuple[Path, Settings]:
    """The photo folder and corpus settings that --population, --photos and --people ask for."""
    pop = POPULATIONS[a.population]
    people = pop.settings.people if a.people is None else a.people
    return (a.photos or pop.photos), replace(pop.settings, people=people, **more)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_population_arguments(ap)
    ap.add_argument("--clips-per-person", type=int, default=Settings.clips_per_person)
    ap.add_argument("--seed", type=int, default=Settings.seed)
    ap.add_argument("--workers", type=int, default=0, help="0: one per CPU core")
    a = ap.parse_args(argv)
    photos, s = population_settings(a, clips_per_person=a.clips_per_person, seed=a.seed)
    try:
        print(build(s, photos, a.cache, a.workers))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
