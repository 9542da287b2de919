from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from accessd.align import align_face, eye_angle, largest, nearest_to_center
from accessd.detector import FaceDetector
from accessd.imageio import read_image
from accessd.provision import model_path
from accessd.types import Face
from tests.conftest import DETECTORS, SAMPLES


@pytest.mark.parametrize("roll", [-25.0, 0.0, 20.0])
def test_aligned_crop_levels_the_eyes(roll: float) -> None:
    image = read_image(SAMPLES / "obama.jpg")
    h, w = image.shape[:2]
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), roll, 1.0), (w, h))
    with FaceDetector(model_path(DETECTORS, "full_range"), 0.5) as det:
        (face,) = [f for f in det.detect(rotated) if f.width > 60]
        assert abs(abs(eye_angle(face)) - abs(roll)) < 6
        crop = align_face(rotated, face, 128)
        assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
        (again,) = det.detect(crop)
    # BlazeFace eye keypoints are coarse (a few degrees of jitter): the roll must be
    # mostly removed, not exactly zero.
    assert abs(eye_angle(again)) < 8, eye_angle(again)
    if roll:
        assert abs(eye_angle(again)) < abs(roll) / 2
    # Centred: the face box centre lies near the crop centre.
    cx, cy = again.center
    assert math.hypot(cx - 64, cy - 64) < 16


def test_face_near_the_edge_is_padded_not_shifted() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    crop = align_face(image, Face(-20, -20, 60, 60, 1.0), 32)
    assert crop.shape == (32, 32, 3)


def test_pickers() -> None:
    a, b = Face(0, 0, 10, 10, 1), Face(45, 45, 10, 10, 1)
    assert nearest_to_center([a, b], 100, 100) is b
    assert largest([a, Face(0, 0, 20, 20, 1)]) is not a
    assert largest([]) is None and nearest_to_center([], 1, 1) is None


def _detect_largest(image: np.ndarray) -> Face:
    with FaceDetector(model_path(DETECTORS, "full_range"), 0.5) as det:
        face = largest(det.detect(image))
    assert face is not None
    return face


def test_landmark_chip_puts_the_eyes_where_dlibs_chip_has_them() -> None:
    from accessd.align import CropSpec, crop_face

    image = read_image(SAMPLES / "obama.jpg")
    chip = crop_face(image, _detect_largest(image), CropSpec(150, 0.25, "landmarks"))
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    # BlazeFace misplaces keypoints of a face that fills its whole input: look again
    # at the chip on a larger canvas, as the detector would see it in a frame.
    canvas = np.full((450, 450, 3), 100, np.uint8)
    canvas[150:300, 150:300] = chip
    again = _detect_largest(canvas)
    (rx, ry), (lx, ly) = ((x - 150, y - 150) for x, y in again.keypoints[:2])
    # dlib's template (46, 47) and (102, 47), within BlazeFace's keypoint jitter.
    assert abs(rx - 46.4) < 6 and abs(lx - 102.1) < 6 and abs(ry - 47) < 6 and abs(ly - 47) < 6


def test_a_big_face_is_shrunk_without_aliasing_to_the_same_chip() -> None:
    """A 1080p face (~4x the chip) gives nearly the chip of the same face at 240p."""
    from accessd.align import CropSpec, crop_face

    spec = CropSpec(150, 0.25, "landmarks")
    big, small = read_image(SAMPLES / "obama-1080p.jpg"), read_image(SAMPLES / "obama-240p.jpg")
    a = crop_face(big, _detect_largest(big), spec).astype(np.float32)
    b = crop_face(small, _detect_largest(small), spec).astype(np.float32)
    # Grey-level agreement of the centre (the keypoints differ by a pixel or two).
    centre = np.s_[40:110, 40:110]
    assert np.abs(cv2.GaussianBlur(a, (5, 5), 0)[centre] - cv2.GaussianBlur(b, (5, 5), 0)[centre]).mean() < 20


def test_weighted_similarity_recovers_a_known_transform() -> None:
    from accessd.align import weighted_similarity

    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (4, 2))
    angle, scale, t = 0.3, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + t
    m = weighted_similarity(src, dst, np.array([1.0, 1.0, 0.1, 0.25]))
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], t)
