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
