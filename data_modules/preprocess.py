"""Raw interview clips -> schema records: decode, find the face, extract features, cache.

Per clip (a worker process each, `workers` at once):
* video: PyAV seeks to `video_frames + num_faces` evenly spaced timestamps and decodes only
  from the keyframe before each (never the whole clip); a detector finds the face, one box
  per frame (`face_track`), and square crops become `video` (even timestamps) and `faces`
  (odd ones), so the scorer and the face side see different frames of the same person;
* audio: the first audio track, resampled to 16 kHz mono, then the acoustic features the
  synthetic source uses (`features.audio`);
* text (in the main process, batched across clips): the transcript's sentences embedded
  with the text model.

Each finished clip is one file, written to a temporary name and renamed, so a killed run
resumes where it stopped and never keeps half a clip. A clip that cannot be used (bad file,
no audio, no face, ...) gets a skip file with its reason instead, and is counted in the
report. Files are named after the clip and a digest of its input (the video's size and
mtime, or the transcript), so a changed input is processed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from data_modules.files import atomic_write, json_text, peak_rss_mb, remove_stale

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 2  # bump when a clip's arrays change for the same settings
SAMPLE_RATE = 16000

# skip reason -> what it means (docs/data.md and the report print these)
SKIP_REASONS = {
    "empty_file": "the video file has zero bytes",
    "decode_error": "PyAV could not open or decode the file (truncated or not a video)",
    "no_video": "the file has no video stream",
    "no_audio": "the file has no audio stream, or it decoded to nothing",
    "no_face": "the detector found no face in any sampled frame",
    "missing_file": "the annotations or the manifest name a video file that does not exist",
    "no_annotation": "a video file under the root has no label in the annotations",
    "no_transcript": "the clip has no transcript entry",
    "empty_transcript": "the transcript is empty or holds only whitespace",
    "transcript_not_utf8": "the transcript file is not valid UTF-8",
    "transcript_missing": "the transcript file named in the manifest does not exist",
}


class SkipClip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ClipEntry:
    """One clip of a raw corpus, as its source's annotations describe it."""

    clip_id: str
    identity: str
    path: str
    transcript: str
    label: float
    gender: int
    ethnicity: int
    official_split: str | None = None


@dataclass(frozen=True)
class Skipped:
    clip_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Settings:
    """`data.preprocess`: everything a clip's media result depends on."""

    detector: str = "haar"
    video_frames: int = 4
    num_faces: int = 4
    image_size: int = 32
    face_margin: float = 0.25
    max_audio_seconds: float = 60.0
    face_embedding: str = "none"

    @classmethod
    def from_cfg(cls, cfg) -> Settings:
        return cls(**{k: type(getattr(cls, k))(cfg[k]) for k in cls.__dataclass_fields__})

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": PREPROCESS_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def digest(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- decoding
def sample_times(duration: float, n: int) -> np.ndarray:
    """n evenly spaced timestamps, each in the middle of its 1/n of the clip."""
    return (np.arange(n) + 0.5) * duration / n


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    raise SkipClip("decode_error", "the file states no duration")


def keyframe_times(container, stream) -> list[float]:
    """Keyframe timestamps from the packet index (reading packets, decoding nothing)."""
    keys = [float(p.pts * p.time_base) for p in container.demux(stream)
            if p.is_keyframe and p.pts is not None]
    return sorted(keys) or [0.0]


def decode_frames(container, times: np.ndarray) -> list[np.ndarray]:
    """RGB frames [H, W, 3] at (or just after) each timestamp, in order.

    Seeks only when a keyframe lies between the frame decoded last and the next timestamp;
    otherwise decoding on is cheaper than returning to a keyframe (web video has GOPs of
    up to 10 s: seeking to every timestamp decoded the same GOP again and again, 2x slower
    than one pass). Non-reference frames are not decoded at all (about 40% of H.264
    frames): a timestamp takes the next reference frame, at most a few frames later.
    """
    stream = container.streams.video[0]
    stream.thread_count = 1  # the clip-parallel workers are the parallelism
    stream.codec_context.skip_frame = "NONREF"
    keys = keyframe_times(container, stream)
    frames: list[np.ndarray] = []
    decoder = None
    position = -np.inf
    last = None
    for t in times:
        key = max((k for k in keys if k <= t), default=keys[0])
        if decoder is None or key > position:
            container.seek(int(key / stream.time_base), stream=stream, backward=True)
            decoder = container.decode(stream)
        picked = None
        for frame in decoder:
            if frame.time is None:
                continue
            position = frame.time
            last = frame
            if frame.time >= t - 0.5 / float(stream.average_rate or 25):
                picked = frame
                break
        if picked is None:  # past the last frame: the clip's last frame stands in
            if last is None:
                raise SkipClip("decode_error", f"no frame could be decoded at {t:.2f}s")
            picked = last
        frames.append(picked.to_ndarray(format="rgb24"))
    return frames


def decode_audio(container, max_seconds: float) -> np.ndarray:
    """The first audio track as 16 kHz mono float32 (at most `max_seconds`)."""
    import av

    stream = container.streams.audio[0]
    container.seek(0)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    limit = int(max_seconds * SAMPLE_RATE)
    parts, n = [], 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            parts.append(out.to_ndarray().reshape(-1))
            n += parts[-1].size
        if n >= limit:
            break
    else:
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    wav = np.concatenate(parts)[:limit] if parts else np.zeros(0, np.float32)
    return wav.astype(np.float32, copy=False)


def open_clip(path: Path):
    import av

    if path.stat().st_size == 0:
        raise SkipClip("empty_file", str(path))
    try:
        return av.open(str(path))
    except av.FFmpegError as e:
        raise SkipClip("decode_error", f"{path}: {e}") from None


# --------------------------------------------------------------------------- one clip
_DETECTORS: dict[str, object] = {}


def _detector(name: str):
    from data_modules.features.faces import get_detector

    if name not in _DETECTORS:
        _DETECTORS[name] = get_detector(name)
    return _DETECTORS[name]


def detect_faces(frames, detector: str):
    """Per-frame face boxes, and how many frames only the fallback found: `dlib_then_haar`
    asks Haar's cascade where dlib's HOG finds nothing (on the real-face benchmark's 900
    clips: Haar alone lost 3 clips and 46 sampled frames, this 0 clips and 8 frames)."""
    if detector != "dlib_then_haar":
        return [_detector(detector).detect(f) for f in frames], 0
    primary, second = _detector("dlib"), _detector("haar")
    out, fallback = [], 0
    for f in frames:
        boxes = primary.detect(f)
        if not boxes:
            boxes = second.detect(f)
            fallback += bool(boxes)
        out.append(boxes)
    return out, fallback


def _face_encoder():
    from data_modules.features.dlib_faces import DlibFaceEncoder

    if "encoder" not in _DETECTORS:
        _DETECTORS["encoder"] = DlibFaceEncoder()
    return _DETECTORS["encoder"]


def process_media(path: Path, s: Settings) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """video, faces and audio arrays of one clip, and seconds per stage; raises SkipClip."""
    import av
    import torch

    from data_modules.features.audio import audio_features
    from data_modules.features.faces import crop_face, face_track

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    container = open_clip(path)
    try:
        if not container.streams.video:
            raise SkipClip("no_video", str(path))
        if not container.streams.audio:
            raise SkipClip("no_audio", str(path))
        n = s.video_frames + s.num_faces
        try:
            frames = decode_frames(container, sample_times(_duration(container,
                                                           container.streams.video[0]), n))
            t1 = time.perf_counter()
            times["decode_video"] = t1 - t0
            wav = decode_audio(container, s.max_audio_seconds)
        except av.FFmpegError as e:
            raise SkipClip("decode_error", f"{path}: {e}") from None
        times["decode_audio"] = time.perf_counter() - t1
    finally:
        container.close()
    if wav.size == 0:
        raise SkipClip("no_audio", f"{path}: the audio stream decoded to no samples")

    t = time.perf_counter()
    detections, fallback = detect_faces(frames, s.detector)
    try:
        boxes, missed = face_track(detections)
    except ValueError:
        raise SkipClip("no_face", f"{path}: no face in {n} sampled frames "
                       f"(detector {s.detector})") from None
    times["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    crops = np.stack([crop_face(f, b, s.image_size, s.face_margin) for f, b in zip(frames, boxes, strict=True)])
    # even timestamps feed the scorer, odd ones the face side (alternating while both last)
    order = list(range(0, 2 * min(s.video_frames, s.num_faces), 2))
    rest = list(range(2 * min(s.video_frames, s.num_faces), n))
    video_idx = order + (rest if s.video_frames > s.num_faces else [])
    face_idx = [i + 1 for i in order] + (rest if s.num_faces > s.video_frames else [])
    times["crop"] = time.perf_counter() - t
    if s.face_embedding == "dlib":  # from the full-resolution frame, aligned by dlib itself
        t = time.perf_counter()
        embed = _face_encoder().embed
        emb = np.concatenate([embed(frames[i], [boxes[i]]) for i in face_idx])
        times["face_embedding"] = time.perf_counter() - t

    t = time.perf_counter()
    audio = audio_features(torch.from_numpy(wav), SAMPLE_RATE).numpy().astype(np.float16)
    times["audio_features"] = time.perf_counter() - t
    arrays = {"video": crops[video_idx], "faces": crops[face_idx], "audio": audio,
              "frames_without_face": np.int64(missed),
              "frames_found_by_fallback": np.int64(fallback)}
    if s.face_embedding == "dlib":
        arrays["face_embedding"] = emb.astype(np.float16)
    return arrays, times


def decode_only(path: Path, s: Settings) -> float:
    """Seconds to decode the same frames and audio as `process_media`, nothing else
    (the yardstick for preprocessing throughput)."""
    t0 = time.perf_counter()
    container = open_clip(path)
    try:
        decode_frames(container, sample_times(
            _duration(container, container.streams.video[0]), s.video_frames + s.num_faces))
        decode_audio(container, s.max_audio_seconds)
    finally:
        container.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the store
class Store:
    """`<cache>/preprocessed/<source>-<key>/`: media/ (one npz per clip), skips/ (one json
    per skipped clip), text-<key>/ (one npy per transcript), report.json / report.md."""

    def __init__(self, root: Path, text_key: str):
        self.root = Path(root)
        self.media_dir = self.root / "media"
        self.skip_dir = self.root / "skips"
        self.text_dir = self.root / f"text-{text_key}"

    @staticmethod
    def input_digest(entry: ClipEntry) -> str:
        st = os.stat(entry.path)
        return digest(st.st_size, st.st_mtime_ns)

    def media_path(self, entry: ClipEntry, stamp: str) -> Path:
        return self.media_dir / f"{entry.clip_id}.{stamp}.npz"

    def skip_path(self, entry: ClipEntry, stamp: str) -> Path:
        return self.skip_dir / f"{entry.clip_id}.{stamp}.json"

    def text_path(self, entry: ClipEntry) -> Path:
        return self.text_dir / f"{entry.clip_id}.{digest(entry.transcript)}.npy"

    def make_dirs(self) -> None:
        """Create the folders, and drop the temporaries of killed runs (never a live one's)."""
        for d in (self.media_dir, self.skip_dir, self.text_dir):
            d.mkdir(parents=True, exist_ok=True)
            for tmp in {p.name.rsplit(".tmp-", 1)[0][1:] for p in d.glob(".*.tmp-*")}:
                remove_stale(d / tmp)


def _media_job(entry: ClipEntry, s: Settings, out: str, skip: str
               ) -> tuple[str, str, dict, float]:
    """Worker: one clip to its npz, or to its skip file.
    Returns (clip, status, seconds per stage, this process's peak RSS in MB)."""
    try:
        arrays, times = process_media(Path(entry.path), s)
    except SkipClip as e:
        info = json.dumps({"clip_id": entry.clip_id, "reason": e.reason, "detail": e.detail})
        atomic_write(Path(skip), info)
        return entry.clip_id, e.reason, {}, peak_rss_mb()
    atomic_write(Path(out), lambda p: np.savez(open(p, "wb"), **arrays))
    return entry.clip_id, "done", times, peak_rss_mb()


def _init_worker() -> None:
    import cv2
    import torch

    from data_modules.files import die_with_parent

    die_with_parent()  # a killed preprocess must not leave workers decoding on
    torch.set_num_threads(1)  # the pool is the parallelism; threads would only contend
    cv2.setNumThreads(1)


# --------------------------------------------------------------------------- text
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, max_sentences: int, max_words: int = 40) -> list[str]:
    """Sentences of a transcript; runs without punctuation are cut every `max_words`."""
    out = []
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        for i in range(0, len(words), max_words):
            out.append(" ".join(words[i:i + max_words]))
    return out[:max_sentences]


def embed_transcripts(entries: list[ClipEntry], store: Store, text_model: str,
                      max_sentences: int, batch_clips: int = 64, times: Counter | None = None
                      ) -> int:
    """Embed the transcripts that have no cached embedding, `batch_clips` clips per batch.
    Returns how many were embedded; adds the model load and embedding seconds to `times`."""
    from data_modules.features import torch_threads
    from data_modules.features.text import embed_sentences, load_text_model

    todo = [e for e in entries if not store.text_path(e).is_file()]
    if not todo:
        return 0
    t = time.perf_counter()
    model = load_text_model(text_model)
    t_load = time.perf_counter()
    with torch_threads(min(2, os.cpu_count() or 1)):
        for i in range(0, len(todo), batch_clips):
            chunk = todo[i:i + batch_clips]
            sentences = [split_sentences(e.transcript, max_sentences) for e in chunk]
            emb = embed_sentences(model, [x for ss in sentences for x in ss]).astype(np.float16)
            start = 0
            for e, ss in zip(chunk, sentences, strict=True):
                part = emb[start:start + len(ss)]
                start += len(ss)
                atomic_write(store.text_path(e), lambda p, a=part: np.save(open(p, "wb"), a))
    if times is not None:
        times["text_model_load"] += t_load - t
        times["text"] += time.perf_counter() - t_load
    return len(todo)


# --------------------------------------------------------------------------- the run
@dataclass
class Report:
    source: str
    corpus: str
    settings: dict
    workers: int
    clips_listed: int = 0
    usable: int = 0
    processed_now: int = 0
    reused: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[dict]] = field(default_factory=dict)
    frames_without_face: int = 0
    frames_found_by_fallback: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    media_wall_seconds: float = 0.0  # the clip-parallel part, pool start-up included
    worker_peak_rss_mb: float = 0.0
    wall_seconds: float = 0.0

    def to_markdown(self) -> str:
        lines = [f"# Preprocessing report: {self.source}", "",
                 f"- corpus: `{self.corpus}`",
                 f"- clips listed: {self.clips_listed}; usable: {self.usable} "
                 f"(processed now: {self.processed_now}, from cache: {self.reused})",
                 f"- skipped: {sum(self.skipped.values())}",
                 f"- sampled frames without a detected face (box borrowed from the nearest "
                 f"frame): {self.frames_without_face}",
                 f"- sampled frames found by the fallback detector only (Haar after dlib): "
                 f"{self.frames_found_by_fallback}",
                 f"- workers: {self.workers}; wall time: {self.wall_seconds:.1f} s (clip-parallel "
                 f"part {self.media_wall_seconds:.1f} s); peak memory of a process doing clips: "
                 f"{self.worker_peak_rss_mb:.0f} MB", ""]
        if self.skipped:
            lines += ["| skip reason | clips | meaning | examples |", "|---|---:|---|---|"]
            for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
                ex = "; ".join(f"{d['clip_id']}" for d in self.skipped_examples[reason][:3])
                lines.append(f"| {reason} | {n} | {SKIP_REASONS[reason]} | {ex} |")
            lines += ["", "Every skipped clip, with its detail: `skipped.csv`.", ""]
        if self.stage_seconds:
            n = max(self.processed_now, 1)
            lines += ["| stage (clips processed now) | total s | s per clip |", "|---|---:|---:|"]
            for stage, sec in self.stage_seconds.items():
                lines.append(f"| {stage} | {sec:.2f} | {sec / n:.3f} |")
        lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        return "\n".join(lines) + "\n"


def preprocess(entries: list[ClipEntry], skipped: list[Skipped], *, store: Store,
               settings: Settings, text_model: str, max_sentences: int, workers: int,
               source: str, corpus: str) -> tuple[list[ClipEntry], Report]:
    """Process every entry not yet in `store`; returns the usable entries and the report
    (also written as report.json / report.md / skipped.csv in the store)."""
    t_start = time.perf_counter()
    store.make_dirs()
    report = Report(source=source, corpus=corpus, workers=workers,
                    settings={**asdict(settings), "text_model": text_model,
                              "max_sentences": max_sentences},
                    clips_listed=len(entries) + len(skipped))
    stage = Counter()

    embed_transcripts(entries, store, text_model, max_sentences, times=stage)

    stamps = {e.clip_id: store.input_digest(e) for e in entries}
    todo = [e for e in entries
            if not store.media_path(e, stamps[e.clip_id]).is_file()
            and not store.skip_path(e, stamps[e.clip_id]).is_file()]
    report.reused = len(entries) - len(todo)
    if todo:
        log.info("preprocessing %d clips with %d worker(s) (%d already done)",
                 len(todo), workers, report.reused)
    jobs = [(e, settings, str(store.media_path(e, stamps[e.clip_id])),
             str(store.skip_path(e, stamps[e.clip_id]))) for e in todo]
    t = time.perf_counter()
    for _, status, times, rss in _run_jobs(jobs, workers):
        report.worker_peak_rss_mb = max(report.worker_peak_rss_mb, round(rss, 1))
        if status == "done":
            report.processed_now += 1
            stage.update(times)
    report.media_wall_seconds = round(time.perf_counter() - t, 3)

    usable, media_skips = [], []
    for e in entries:
        sp = store.skip_path(e, stamps[e.clip_id])
        if sp.is_file():
            info = json.loads(sp.read_text())
            media_skips.append(Skipped(e.clip_id, info["reason"], info["detail"]))
        else:
            usable.append(e)
    for e in usable:
        with np.load(store.media_path(e, stamps[e.clip_id])) as z:
            report.frames_without_face += int(z["frames_without_face"])
            if "frames_found_by_fallback" in z:
                report.frames_found_by_fallback += int(z["frames_found_by_fallback"])
    all_skips = list(skipped) + media_skips
    by_reason = defaultdict(list)
    for sk in all_skips:
        by_reason[sk.reason].append({"clip_id": sk.clip_id, "detail": sk.detail})
    report.skipped = {r: len(v) for r, v in by_reason.items()}
    report.skipped_examples = {r: v[:5] for r, v in by_reason.items()}
    report.usable = len(usable)
    report.stage_seconds = {k: round(v, 3) for k, v in stage.items()}
    report.wall_seconds = round(time.perf_counter() - t_start, 3)
    _write_report(store, report, all_skips)
    return usable, report


def _run_jobs(jobs: list[tuple], workers: int):
    """Yield each job's result as it finishes, with a progress bar on a terminal and a log line
    every ~10% otherwise."""
    from data_modules.progress import Progress

    if not jobs:
        return
    bar = Progress(len(jobs), "preprocess", unit="clips", logger=log)
    try:
        if workers <= 1:
            from data_modules.features import torch_threads

            with torch_threads(1):
                for job in jobs:
                    result = _media_job(*job)
                    bar.update()
                    yield result
            return
        # spawn: a forked child would inherit the parent's torch/OpenMP thread state
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [pool.submit(_media_job, *job) for job in jobs]
            try:
                for fut in as_completed(futures):
                    result = fut.result()
                    bar.update()
                    yield result
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()


def _write_report(store: Store, report: Report, skips: list[Skipped]) -> None:
    import csv

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["clip_id", "reason", "detail"])
            for sk in sorted(skips, key=lambda s: (s.reason, s.clip_id)):
                w.writerow([sk.clip_id, sk.reason, sk.detail])

    atomic_write(store.root / "skipped.csv", write_csv)
    atomic_write(store.root / "report.json", json_text(asdict(report)))
    atomic_write(store.root / "report.md", report.to_markdown())


def load_record(entry: ClipEntry, store: Store) -> dict:
    """The schema record of a processed clip (media + text + annotations)."""
    with np.load(store.media_path(entry, store.input_digest(entry))) as z:
        arrays = {k: z[k] for k in ("video", "faces", "audio", "face_embedding") if k in z}
    return {"clip_id": entry.clip_id, "identity": entry.identity,
            "text": np.load(store.text_path(entry)), **arrays,
            "label": np.float32(entry.label), "merit": np.float32("nan"),
            "gender": int(entry.gender), "ethnicity": int(entry.ethnicity)}
