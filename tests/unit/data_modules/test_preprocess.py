"""The pieces of raw-video preprocessing: frame seeking, face tracks and crops, sentences,
and the pickle loader."""

from __future__ import annotations

import pickle
from fractions import Fraction

import av
import numpy as np
import pytest

from data_modules.errors import CorpusError
from data_modules.features.faces import crop_face, face_track
from data_modules.preprocess import decode_frames, sample_times, split_sentences
from data_modules.safe_pickle import UnsafePickleError, load_pickle

FPS = 25


@pytest.fixture(scope="module")
def numbered_clip(tmp_path_factory):
    """4 s at 25 fps whose frame i shows i in binary (8 black/white stripes), with 2 s GOPs
    and B-frames (as web video has), so seeking and skipped frames are both exercised."""
    path = tmp_path_factory.mktemp("clip") / "numbered.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 2 * FPS
        stream.options = {"bf": "3", "crf": "10", "sc_threshold": "0"}
        for i in range(4 * FPS):
            img = np.zeros((48, 64, 3), np.uint8)
            for bit in range(8):
                img[:, 8 * bit:8 * bit + 8] = 255 * ((i >> bit) & 1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def frame_index(rgb: np.ndarray) -> int:
    return sum(int(rgb[:, 8 * b + 2:8 * b + 6].mean() > 128) << b for b in range(8))


def test_decode_frames_lands_on_or_just_after_each_timestamp(numbered_clip):
    times = sample_times(4.0, 8)
    with av.open(str(numbered_clip)) as c:
        frames = decode_frames(c, times)
    index = np.array([frame_index(f) for f in frames])
    wanted = np.ceil(times * FPS - 0.5)
    # never early; at most a few frames late (non-reference frames are not decoded)
    assert (index >= wanted).all() and (index <= wanted + 4).all(), (index, wanted)
    assert (np.diff(index) > 0).all()


def test_decode_frames_past_the_end_takes_the_last_frame(numbered_clip):
    with av.open(str(numbered_clip)) as c:
        frames = decode_frames(c, np.array([3.9, 60.0]))
    assert len(frames) == 2 and frame_index(frames[1]) >= 95


def test_face_track_borrows_the_nearest_detection():
    a, b = (10, 10, 20, 20), (40, 10, 20, 20)
    boxes, missed = face_track([[], [a], [], [], [b, a]])
    assert boxes == [a, a, a, b, b] and missed == 3  # ties go to the earlier frame
    with pytest.raises(ValueError, match="no face"):
        face_track([[], []])


def test_crop_face_pads_at_the_border_and_resizes():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = 200
    crop = crop_face(rgb, (0, 0, 20, 20), 16, margin=0.5)  # reaches past the top-left corner
    assert crop.shape == (3, 16, 16) and crop.dtype == np.uint8
    assert crop.min() == 200  # edge padding repeats the border, no black frame
    centre = crop_face(rgb, (25, 10, 10, 10), 8, margin=0.0)
    assert centre[:, :, :3].mean() == 200 and centre[:, :, -3:].mean() == 0


def test_split_sentences():
    assert split_sentences("I led it. Did it work?  Yes!", 16) == ["I led it.", "Did it work?",
                                                                   "Yes!"]
    long = " ".join(f"w{i}" for i in range(90))
    parts = split_sentences(long, 16, max_words=40)
    assert [len(p.split()) for p in parts] == [40, 40, 10]
    assert len(split_sentences("A. " * 30, 5)) == 5


def test_load_pickle_reads_python2_strings_and_names_bad_files(tmp_path):
    # protocol 2 as Python 2 writes str: SHORT_BINSTRING, decoded as latin1
    blob = b"\x80\x02}q\x00U\x03caf" + b"q\x01U\x04caf\xe9q\x02s."
    (tmp_path / "py2.pkl").write_bytes(blob)
    assert load_pickle(tmp_path / "py2.pkl") == {"caf": "caf\xe9"}
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"a": [1, 2, 3]})[:-4])
    with pytest.raises(CorpusError, match="cut.pkl: not a readable pickle"):
        load_pickle(tmp_path / "cut.pkl")
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(np.float64(0.5)))
    with pytest.raises(UnsafePickleError, match="obj.pkl: refused.*numpy"):
        load_pickle(tmp_path / "obj.pkl")


def test_the_fallback_detector_is_asked_only_where_dlib_finds_nothing(monkeypatch):
    from data_modules import preprocess

    class Fixed:
        def __init__(self, found):
            self.found, self.calls = found, 0

        def detect(self, frame):
            self.calls += 1
            return self.found(int(frame[0, 0, 0]))

    dlib = Fixed(lambda i: [(1, 1, 5, 5)] if i % 2 else [])  # misses the even frames
    haar = Fixed(lambda i: [(2, 2, 4, 4)] if i != 4 else [])  # and Haar misses frame 4
    monkeypatch.setattr(preprocess, "_DETECTORS", {"dlib": dlib, "haar": haar})
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(6)]
    boxes, fallback = preprocess.detect_faces(frames, "dlib_then_haar")
    assert boxes == [[(2, 2, 4, 4)], [(1, 1, 5, 5)], [(2, 2, 4, 4)], [(1, 1, 5, 5)], [],
                     [(1, 1, 5, 5)]]
    assert fallback == 2 and dlib.calls == 6 and haar.calls == 3
    only_haar, none = preprocess.detect_faces(frames, "haar")
    assert none == 0 and len(only_haar) == 6
