"""Face detection and cropping for raw video, behind one small detector interface.

A detector maps an RGB frame to face boxes; `face_track` turns per-frame detections into
one box per frame (a frame without a detection borrows the nearest frame's box, so a blink
or a turned head does not lose the frame) and `crop_face` cuts a square, resized crop.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in pixels of the frame given to detect()


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Face boxes in an [H, W, 3] uint8 RGB frame, largest first."""
        ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (shipped inside opencv-python-headless < 5).

    Frames are shrunk so their longer side is `max_side` before detection: interview faces
    are large, and the cascade's cost grows with the pixel count.
    """

    name = "haar"

    def __init__(self, max_side: int = 320, min_face_share: float = 0.15,
                 scale_factor: float = 1.1, min_neighbors: int = 5):
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path} (opencv-python-headless "
                               "4.x ships it; 5.x does not)")
        self.max_side = max_side
        self.min_face_share = min_face_share
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, rgb: np.ndarray) -> list[Box]:
        import cv2

        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (round(w * scale), round(h * scale)),
                              interpolation=cv2.INTER_AREA)
        side = max(8, int(self.min_face_share * min(gray.shape)))
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                               minNeighbors=self.min_neighbors,
                                               minSize=(side, side))
        boxes = [tuple(int(round(v / scale)) for v in b) for b in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda b: -b[2] * b[3])


def get_detector(name: str) -> FaceDetector:
    if name == "haar":
        return HaarDetector()
    if name == "dlib":
        from data_modules.features.dlib_faces import DlibDetector

        # one upsampling at 320 px finds faces down to ~40 px there (160 px in a 720p frame)
        # at the cost of no upsampling at 640 px, and small frames still work
        return DlibDetector(upsample=1, max_side=320)
    raise ValueError(f"unknown face detector {name!r}; available: haar, dlib")


def face_track(detections: list[list[Box]]) -> tuple[list[Box], int]:
    """One box per frame from per-frame detections (largest face each); frames without one
    take the nearest detected frame's box. Returns (boxes, frames without a detection);
    raises ValueError when no frame has a face."""
    found = [i for i, d in enumerate(detections) if d]
    if not found:
        raise ValueError("no face detected in any sampled frame")
    boxes = []
    for i, d in enumerate(detections):
        src = i if d else min(found, key=lambda j: (abs(j - i), j))
        boxes.append(detections[src][0])
    return boxes, len(detections) - len(found)


def crop_face(rgb: np.ndarray, box: Box, size: int, margin: float = 0.25) -> np.ndarray:
    """A square crop around `box`, widened by `margin` of its side on each side (hair, jaw
    and ears carry identity), edge-padded where it leaves the frame -> [3, size, size] uint8."""
    import cv2

    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    H, W = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    if pad:
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0 = x0 + pad, y0 + pad
    crop = rgb[y0:y0 + s, x0:x0 + s]
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop.transpose(2, 0, 1))
