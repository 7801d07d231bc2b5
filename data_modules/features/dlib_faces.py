"""Pretrained face detection and 128-d face descriptors from dlib, on CPU and offline.

Two PyPI packages provide everything: ``dlib-bin`` (prebuilt dlib with its HOG frontal face
detector) and ``face-recognition-models`` (the 5-point landmark predictor and the ResNet
descriptor network as ``.dat`` files). Neither is imported when this module is, so the rest of
the code base keeps working without them; the classes raise a ``RuntimeError`` naming the
packages instead.

Boxes are ``(x, y, w, h)`` in pixels of the frame they refer to, as elsewhere in the project.
Frames are uint8 ``H x W x 3`` RGB arrays.

dlib holds the GIL while it computes and runs single-threaded, so threads do not speed it up;
use processes for parallelism. Each instance guards its models with a lock, so sharing one
between threads is safe, just serial.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install 'fair_lightning[faces]'"  # dlib-bin, face-recognition-models
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150  # the descriptor network's fixed input size
DESCRIPTOR_DIM = 128

Box = tuple[int, int, int, int]


def _import_dlib():
    try:
        import dlib
    except ImportError as e:
        raise RuntimeError(
            f"dlib is not importable ({e}); install the prebuilt wheel and the model files "
            f"with `{INSTALL_HINT}`") from e
    return dlib


def default_model_dir() -> Path:
    """Folder of the ``.dat`` files shipped by the ``face-recognition-models`` package.

    The package is located, not imported: its ``__init__`` needs ``pkg_resources``, which
    recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the dlib model files are missing: package 'face-recognition-models' is not "
            f"installed; install it with `{INSTALL_HINT}`")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _model_file(path: str | Path | None, filename: str) -> str:
    p = Path(path) if path is not None else default_model_dir() / filename
    if not p.is_file():
        raise RuntimeError(
            f"dlib model file not found: {p}; install the model package with `{INSTALL_HINT}` "
            "or pass the path explicitly")
    return str(p)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB frame, got {rgb.dtype} {rgb.shape}")
    # dlib ignores strides: a flipped or sliced view would be read as a different image
    return np.ascontiguousarray(rgb)


def _resize_area(rgb: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Downscale by area averaging (anti-aliased), with OpenCV when present, else dlib."""
    try:
        import cv2
    except ImportError:
        return np.ascontiguousarray(_import_dlib().resize_image(rgb, rows, cols))
    return cv2.resize(rgb, (cols, rows), interpolation=cv2.INTER_AREA)


class DlibDetector:
    """dlib's HOG + linear SVM frontal face detector.

    ``upsample`` doubles the frame that many times before detection (finds faces smaller than
    the detector's 80x80 window, at ~4x the cost each). ``max_side`` first shrinks frames whose
    longer side exceeds it; boxes are scaled back to the input frame. ``threshold`` is added to
    the SVM's decision threshold (negative keeps more, weaker detections).
    """

    name = "dlib"

    def __init__(self, upsample: int = 0, max_side: int | None = None, threshold: float = 0.0):
        if upsample < 0:
            raise ValueError("upsample must be >= 0")
        if max_side is not None and max_side < 1:
            raise ValueError("max_side must be positive")
        self.upsample = int(upsample)
        self.max_side = max_side
        self.threshold = float(threshold)
        self._detector = _import_dlib().get_frontal_face_detector()
        self._lock = threading.Lock()

    def detect_scored(self, rgb: np.ndarray) -> list[tuple[Box, float]]:
        """Boxes with their detector scores, largest box first."""
        rgb = _as_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            rgb = _resize_area(rgb, max(1, round(h * scale)), max(1, round(w * scale)))
        with self._lock:
            rects, scores, _ = self._detector.run(rgb, self.upsample, self.threshold)
        out = []
        for r, s in zip(rects, scores, strict=True):
            # dlib's right/bottom are inclusive; boxes may stick out of the frame, so clip
            x0 = max(0, round(r.left() / scale))
            y0 = max(0, round(r.top() / scale))
            x1 = min(w, round((r.right() + 1) / scale))
            y1 = min(h, round((r.bottom() + 1) / scale))
            if x1 > x0 and y1 > y0:
                out.append(((x0, y0, x1 - x0, y1 - y0), float(s)))
        out.sort(key=lambda bs: bs[0][2] * bs[0][3], reverse=True)
        return out

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Face boxes ``(x, y, w, h)`` in pixels of ``rgb``, largest first."""
        return [b for b, _ in self.detect_scored(rgb)]


class DlibFaceEncoder:
    """dlib's ResNet face descriptor (128-d, trained for identity on ~3M faces).

    Per box: 5-point landmarks, a 150x150 chip rotated and scaled so the eyes and nose sit at
    canonical positions, then the network. Raw descriptors are not unit length (norms ~1.4 on
    real faces); dlib calls two faces the same person below a Euclidean distance of 0.6.
    ``num_jitters > 1`` averages over that many random jitters of the chip: slower, slightly
    more robust, no longer deterministic. ``normalize`` rescales descriptors to unit length.
    """

    dim = DESCRIPTOR_DIM

    def __init__(self, num_jitters: int = 0, padding: float = 0.25, normalize: bool = False,
                 shape_predictor_path: str | Path | None = None,
                 recognition_model_path: str | Path | None = None):
        dlib = _import_dlib()
        self.num_jitters = int(num_jitters)
        self.padding = float(padding)
        self.normalize = normalize
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(
            _model_file(shape_predictor_path, SHAPE_PREDICTOR_FILE))
        self._net = dlib.face_recognition_model_v1(
            _model_file(recognition_model_path, RECOGNITION_MODEL_FILE))
        self._lock = threading.Lock()

    def _shapes(self, rgb: np.ndarray, boxes: list[Box]):
        shapes = self._dlib.full_object_detections()
        for x, y, w, h in boxes:
            if w <= 0 or h <= 0:
                raise ValueError(f"empty box {(x, y, w, h)}")
            rect = self._dlib.rectangle(int(x), int(y), int(x + w - 1), int(y + h - 1))
            shapes.append(self._predictor(rgb, rect))
        return shapes

    def align(self, rgb: np.ndarray, boxes: list[Box]) -> np.ndarray:
        """Aligned face chips, uint8 ``[len(boxes), 150, 150, 3]`` RGB."""
        rgb = _as_rgb(rgb)
        if not boxes:
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        with self._lock:
            chips = self._dlib.get_face_chips(rgb, self._shapes(rgb, boxes), CHIP_SIZE,
                                              self.padding)
        return np.stack(chips)

    def embed(self, rgb: np.ndarray, boxes: list[Box]) -> np.ndarray:
        """Descriptors, float32 ``[len(boxes), 128]``, one row per box in order."""
        rgb = _as_rgb(rgb)
        if not boxes:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            chips = self._dlib.get_face_chips(rgb, self._shapes(rgb, boxes), CHIP_SIZE,
                                              self.padding)
            # the chip overload takes a batch of pre-aligned 150x150 faces
            desc = self._net.compute_face_descriptor(chips, self.num_jitters)
        out = np.asarray([np.asarray(d) for d in desc], dtype=np.float32)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
