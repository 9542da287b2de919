"""Face crop and alignment: the one implementation used by enrolment, serving and training.

A face is cropped as a square around its detector box, enlarged by a margin,
rotated so the eyes are level, and resized to the model's input in one affine
warp (one interpolation, no intermediate crop that could fall off the frame).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from accessd.types import Face, Image

DEFAULT_MARGIN = 0.25


def eye_angle(face: Face) -> float:
    """Roll angle in degrees that levels the eyes, 0 when keypoints are missing."""
    if len(face.keypoints) < 2:
        return 0.0
    (rx, ry), (lx, ly) = face.keypoints[0], face.keypoints[1]
    # The subject's right eye is on the image's left: the vector right->left eye
    # points along +x for an upright face.
    return math.degrees(math.atan2(ly - ry, lx - rx))


def align_face(image: Image, face: Face, size: int, margin: float = DEFAULT_MARGIN) -> Image:
    """Return a size x size RGB crop of `face`, eyes level, with `margin` around the box."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    cx, cy = face.center
    side = max(face.width, face.height) * (1.0 + 2.0 * margin)
    scale = size / max(side, 1.0)
    matrix = cv2.getRotationMatrix2D((cx, cy), eye_angle(face), scale)
    # Move the face centre to the crop centre.
    matrix[0, 2] += size / 2.0 - cx
    matrix[1, 2] += size / 2.0 - cy
    crop = cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.ascontiguousarray(crop, dtype=np.uint8)


def nearest_to_center(faces: list[Face], width: int, height: int) -> Face | None:
    """The face nearest the image centre (LFW's labelled person is the central face)."""
    if not faces:
        return None
    cx, cy = width / 2.0, height / 2.0
    return min(faces, key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2)


def largest(faces: list[Face]) -> Face | None:
    """The largest face: at a door, the person nearest the camera."""
    return max(faces, key=lambda f: f.area) if faces else None
