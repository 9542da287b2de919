"""Face crop and alignment: the one implementation used by enrolment, serving and training.

Two ways to cut a face out, chosen by the model's contract (`alignment`):
- `landmarks` (the `resnet` model): dlib's face chip, a similarity transform
  fitted to MediaPipe's eye, nose and mouth keypoints so they land where dlib's
  5-point chip puts them (`get_face_chip(size=150, padding=0.25)`). dlib's
  pretrained weights expect exactly that framing.
- `box` (the `compact` and `koch` models): a square around the detector box,
  enlarged by a margin and rotated so the eyes are level.
Either is one affine warp (one interpolation, no intermediate crop that could
fall off the frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from accessd.types import Face, Image

DEFAULT_MARGIN = 0.25
METHODS = ("box", "landmarks")

# Where MediaPipe BlazeFace's keypoints land in dlib's 150 px chip with padding
# 0.25 (full-range detector, mean over 1,500 LFW photos of people outside
# pairsDevTest; ../shared/notes/mediapipe-to-dlib-chip.md), and how much each
# counts in the fit. Ears move with head turn (sd 16-18 px): left out. The nose
# tip sticks out of the face plane: down-weighted. Measured there on
# pairsDevTest, this weighting loses nothing against dlib's own chips.
_CHIP_SIZE, _CHIP_PADDING = 150.0, 0.25
_TEMPLATE = np.array([(46.36, 47.03), (102.07, 46.85), (73.96, 79.23), (73.89, 108.07)], np.float64)
_WEIGHTS = np.array([1.0, 1.0, 0.1, 0.25], np.float64)
# Shrinking a large face by more than this in one bilinear warp aliases; such
# faces are first reduced with INTER_AREA (dlib's chip extractor does the same
# with an image pyramid).
_MAX_WARP_SHRINK = 1.5


@dataclass(frozen=True)
class CropSpec:
    """How a model wants its faces cut: output size, margin (padding) and method."""

    size: int
    margin: float = DEFAULT_MARGIN
    method: str = "box"

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"crop size must be positive, got {self.size}")
        if self.method not in METHODS:
            raise ValueError(f"unknown alignment {self.method!r}; choose from {', '.join(METHODS)}")


def crop_face(image: Image, face: Face, spec: CropSpec) -> Image:
    """The face cut out as `spec` says: a spec.size x spec.size RGB uint8 crop."""
    if spec.method == "landmarks" and len(face.keypoints) >= 4:
        return _warp(image, chip_transform(face, spec.size, spec.margin), spec.size, cv2.BORDER_CONSTANT)
    # "box", or a face without keypoints: dlib's chip is roughly the box enlarged
    # by the padding, which is what the box crop gives.
    return align_face(image, face, spec.size, spec.margin)


def chip_transform(face: Face, size: int, padding: float = _CHIP_PADDING) -> npt.NDArray[np.float64]:
    """2x3 matrix from image pixels to dlib's chip: a weighted similarity fit of the keypoints."""
    # The template in dlib's unit square (0..1 spans the face), then in this chip's pixels.
    unit = _TEMPLATE / _CHIP_SIZE * (1 + 2 * _CHIP_PADDING) - _CHIP_PADDING
    dst = (unit + padding) / (1 + 2 * padding) * size
    src = np.asarray(face.keypoints[:4], np.float64)
    return weighted_similarity(src, dst, _WEIGHTS)


def weighted_similarity(src: npt.NDArray[np.float64], dst: npt.NDArray[np.float64],
                        w: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Least-squares rotation + uniform scale + translation mapping src onto dst, points weighted.

    Closed form (weighted Procrustes without reflection). OpenCV's
    estimateAffinePartial2D has no weights, and unweighted fits that include the
    nose and ears cost accuracy (see _TEMPLATE).
    """
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    s, d = src - ms, dst - md
    norm = float(w @ (s**2).sum(axis=1))
    if norm <= 1e-12:
        raise ValueError("keypoints coincide: cannot fit an alignment")
    a = float(w @ (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1])) / norm
    b = float(w @ (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0])) / norm
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (md - rot @ ms)[:, None]])


def _warp(image: npt.NDArray[np.uint8], matrix: npt.NDArray[np.float64], size: int, border: int) -> Image:
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 1.0 / _MAX_WARP_SHRINK:
        # Reduce only the region the crop reads, then warp the rest of the way.
        inv = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inv.T
        h, w = image.shape[:2]
        x0, y0 = (max(0, math.floor(v) - 2) for v in corners.min(axis=0))
        x1, y1 = min(w, math.ceil(corners[:, 0].max()) + 2), min(h, math.ceil(corners[:, 1].max()) + 2)
        if x1 > x0 and y1 > y0:
            # The ROI at the chip's scale: the warp that remains is ~1:1.
            roi = image[y0:y1, x0:x1]
            small = cv2.resize(roi, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                               interpolation=cv2.INTER_AREA)
            rx, ry = small.shape[1] / (x1 - x0), small.shape[0] / (y1 - y0)
            a = matrix[:, :2]
            matrix = np.hstack([a @ np.diag([1 / rx, 1 / ry]), (a @ np.array([x0, y0]) + matrix[:, 2])[:, None]])
            image = np.asarray(small, dtype=np.uint8)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
    return np.ascontiguousarray(crop, dtype=np.uint8)


def eye_angle(face: Face) -> float:
    """Roll angle in degrees that levels the eyes, 0 when keypoints are missing."""
    if len(face.keypoints) < 2:
        return 0.0
    (rx, ry), (lx, ly) = face.keypoints[0], face.keypoints[1]
    # The subject's right eye is on the image's left: the vector right->left eye
    # points along +x for an upright face.
    return math.degrees(math.atan2(ly - ry, lx - rx))


def levelled(face: Face, side: float, size: int) -> npt.NDArray[np.float64]:
    """The 2 x 3 map from frame pixels to a size x size square of `side` frame pixels centred on
    the face, rotated so its eyes are level (the face crop, the mesh crop, the instrument region)."""
    cx, cy = face.center
    matrix = cv2.getRotationMatrix2D((cx, cy), eye_angle(face), size / max(side, 1.0))
    matrix[0, 2] += size / 2.0 - cx  # the face's centre to the square's centre
    matrix[1, 2] += size / 2.0 - cy
    return np.asarray(matrix, np.float64)


def align_face(image: Image, face: Face, size: int, margin: float = DEFAULT_MARGIN) -> Image:
    """Return a size x size RGB crop of `face`, eyes level, with `margin` around the box."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    side = max(face.width, face.height) * (1.0 + 2.0 * margin)
    scale = size / max(side, 1.0)
    matrix = levelled(face, side, size)
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


def context_crop(image: Image, face: Face, scale: float = 2.0) -> Image:
    """The face with its surroundings (a box `scale` times the face's, clipped to the frame).

    For snapshots a person reviews, and may enrol from: the model's tight chip
    is too tight for the detector to find the face in again.
    """
    h, w = image.shape[:2]
    cx, cy = face.x + face.width / 2, face.y + face.height / 2
    half = max(face.width, face.height) * scale / 2
    x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
    x1, y1 = min(w, int(cx + half)), min(h, int(cy + half))
    return image[y0:y1, x0:x1].copy() if x1 > x0 and y1 > y0 else image.copy()
