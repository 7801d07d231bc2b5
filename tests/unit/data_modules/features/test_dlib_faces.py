"""dlib face detector and descriptor on real photos that ship inside installed packages.

matplotlib (a project dependency) ships a portrait of Grace Hopper. dlib and its model
files are required: a missing install fails here with the pip command to run.
"""

import subprocess
import sys

import cv2
import numpy as np
import pytest
from matplotlib import cbook

from data_modules.features import dlib_faces
from data_modules.features.dlib_faces import DlibDetector, DlibFaceEncoder

SAME_PERSON = 0.6  # dlib's documented same-identity distance for these descriptors


def load_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    img = load_rgb(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    assert img.shape == (600, 512, 3)
    return img


def _or_fail(build):
    try:
        return build()
    except RuntimeError as e:  # a missing install fails, with the pip command, never skips
        pytest.fail(f"dlib face models unavailable: {e}")


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return _or_fail(DlibDetector)


@pytest.fixture(scope="module")
def encoder() -> DlibFaceEncoder:
    return _or_fail(DlibFaceEncoder)


def iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def one_face(detector, rgb):
    boxes = detector.detect(rgb)
    assert len(boxes) == 1, boxes
    return boxes[0]


def test_detects_the_face_with_a_plausible_box(detector, hopper):
    x, y, w, h = one_face(detector, hopper)
    assert all(isinstance(v, int) for v in (x, y, w, h))
    # the face spans roughly x 170-370, y 140-350 in this portrait
    assert 150 <= w <= 300 and 0.8 <= h / w <= 1.25
    assert 230 <= x + w / 2 <= 310 and 200 <= y + h / 2 <= 300
    assert x >= 0 and y >= 0 and x + w <= hopper.shape[1] and y + h <= hopper.shape[0]


def test_max_side_boxes_are_in_input_pixels(detector, hopper):
    ref = one_face(detector, hopper)
    big = cv2.resize(hopper, (1024, 1200), interpolation=cv2.INTER_CUBIC)
    boxes = DlibDetector(max_side=600).detect(big)
    assert len(boxes) == 1
    assert iou(boxes[0], tuple(2 * v for v in ref)) > 0.8


def test_flipped_view_is_read_with_its_strides(detector, hopper):
    x, y, w, h = one_face(detector, hopper)
    fx, fy, fw, fh = one_face(detector, hopper[:, ::-1])  # a negative-stride view
    assert iou((fx, fy, fw, fh), (hopper.shape[1] - x - w, y, w, h)) > 0.7


def test_largest_first_and_no_face_in_noise(detector, hopper):
    frame = np.full((700, 1300, 3), 127, np.uint8)
    frame[50:650, 700:1212] = hopper
    small = cv2.resize(hopper, (256, 300), interpolation=cv2.INTER_AREA)
    frame[300:600, 50:306] = small
    boxes = detector.detect(frame)
    assert len(boxes) == 2
    assert boxes[0][0] > 700 and boxes[1][0] < 306
    assert boxes[0][2] * boxes[0][3] > 2 * boxes[1][2] * boxes[1][3]
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(np.zeros((4, 4, 3), np.uint8)) == []


def test_rejects_non_rgb_uint8(detector, hopper):
    with pytest.raises(ValueError):
        detector.detect(hopper.astype(np.float32))
    with pytest.raises(ValueError):
        detector.detect(hopper[..., 0])


def test_embedding_shape_norm_and_determinism(detector, encoder, hopper):
    box = one_face(detector, hopper)
    e = encoder.embed(hopper, [box, box])
    assert e.shape == (2, encoder.dim) == (2, 128) and e.dtype == np.float32
    assert np.isfinite(e).all()
    norms = np.linalg.norm(e, axis=1)
    # raw dlib descriptors are not unit length; real faces sit around 1.4
    assert np.all((norms > 1.0) & (norms < 2.0)), norms
    assert np.array_equal(e[0], e[1])
    assert np.array_equal(e, encoder.embed(hopper.copy(), [box, box]))
    fresh = DlibFaceEncoder(normalize=True).embed(hopper, [box])
    np.testing.assert_allclose(np.linalg.norm(fresh, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(fresh[0], e[0] / norms[0], atol=1e-5)
    assert encoder.embed(hopper, []).shape == (0, 128)
    assert encoder.align(hopper, [box]).shape == (1, 150, 150, 3)


def variants(img: np.ndarray) -> list[np.ndarray]:
    """The same photo mirrored, cropped off-centre and at half size."""
    h, w = img.shape[:2]
    return [img[:, ::-1], img[h // 10:, : w - w // 8],
            cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)]


def embed_one(detector, encoder, img) -> np.ndarray:
    """Descriptor of the most confident detection (a face-like patch can also fire)."""
    scored = detector.detect_scored(img)
    assert scored, "no face found"
    return encoder.embed(img, [max(scored, key=lambda bs: bs[1])[0]])[0]


def test_same_face_under_crops_and_flips_stays_one_identity(detector, encoder, hopper):
    ref = embed_one(detector, encoder, hopper)
    d = [np.linalg.norm(embed_one(detector, encoder, v) - ref) for v in variants(hopper)]
    assert max(d) < SAME_PERSON, d
    # a box shifted off the face must move the descriptor more than any of those variants
    x, y, w, h = one_face(detector, hopper)
    off = encoder.embed(hopper, [(x + w // 2, y + h // 2, w, h)])[0]
    assert np.linalg.norm(off - ref) > max(d)


def test_missing_dlib_raises_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    for cls in (DlibDetector, DlibFaceEncoder):
        with pytest.raises(RuntimeError, match=r"pip install .fair_lightning\[faces\]."):
            cls()


def test_missing_model_files_raise_with_install_hint(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match=r"pip install .fair_lightning\[faces\]."):
        DlibFaceEncoder(shape_predictor_path=tmp_path / "absent.dat")
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # package not findable
    with pytest.raises(RuntimeError, match="face-recognition-models"):
        dlib_faces.default_model_dir()
    with pytest.raises(RuntimeError, match=r"pip install .fair_lightning\[faces\]."):
        DlibFaceEncoder()


def test_module_imports_without_dlib():
    code = ("import sys; sys.modules['dlib'] = None; "
            "import data_modules.features.dlib_faces as m; print(m.DlibFaceEncoder.dim)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "128"
