"""Is the face inside a picture? A straight-edged frame around it: a paper's edge, a phone's bezel.

A face shown on a print or a screen sits inside a rectangle, the picture's
own edge, a little larger than the face and roughly square to it. A live head
has no such frame close around it on three or four sides. The check finds long
straight edges (Canny, then a probabilistic Hough transform) in a region a few
face sizes around the face, keeps those aligned with the face's axes (rolled
with the eyes, within 25 degrees: a picture's face may tilt inside it),
lying wholly outside the face box and running along it, and names the sides
they close off. All four sides: a picture.

Deny-only: it never grants; it turns a face into `spoof_suspected`. Tuned so
that it never fires on the shared live clip and on at most 0.1 % of LFW's
13,233 photos (train/spoof_eval.py measures both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from accessd.align import levelled
from accessd.types import Face, Image


@dataclass(frozen=True)
class FrameRule:
    region: float = 6.0  # look this many face sizes around the face's centre ...
    max_gap: float = 1.8  # ... for edges at most this many face sizes out from the face box
    # ... and below it this many: a picture shows shoulders, so its bottom edge lies further out
    # (phones replaying the clip from its downward glance, the face small and high on the screen,
    # showed it 1.8-2.4 sizes down; with 1.8 two replays of 100 got in on three sides).
    max_gap_below: float = 2.5
    min_span: float = 0.75  # the edges on a side must run along at least this much of the face's extent ...
    min_segment: float = 0.4  # ... in straight pieces at least this long (in face sizes)
    max_tilt_deg: float = 25.0  # and lie within this of the face's own axes
    sides: int = 4  # all four sides closed off: a picture (three let 0.6 % of LFW photos through)
    canny: tuple[int, int] = (80, 200)  # (60, 160) let 0.16 % of LFW through, this 6 of those 21
    work_px: int = 440  # the region is resized to about this, so the cost is the same at any face size


def picture_frame(image: Image, face: Face, rule: FrameRule | None = None) -> str | None:
    """The named reason when `face` sits inside a straight-edged frame, else None."""
    rule = rule or FrameRule()
    sides = frame_sides(image, face, rule)
    if len(sides) >= rule.sides:
        return f"instrument: straight edges around the face on {len(sides)} sides ({', '.join(sorted(sides))})"
    return None


def frame_sides(image: Image, face: Face, rule: FrameRule) -> set[str]:
    size = max(face.width, face.height)
    if size < 8:
        return set()
    # Level the eyes and centre the face: the picture's edges become horizontal and vertical.
    scale = rule.work_px / (rule.region * size)
    matrix = levelled(face, rule.region * size, rule.work_px)
    # Outside the camera's picture is "unknown", not an edge: beyond the frame, and black
    # padding (letterboxing, a photo pasted onto black) reaching the frame's or the region's edge.
    region = cv2.warpAffine(image, matrix, (rule.work_px, rule.work_px), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.full(image.shape[:2], 255, np.uint8), matrix, (rule.work_px, rule.work_px),
                            flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside[_padding(region, inside)] = 0
    inside = cv2.erode(inside, np.ones((9, 9), np.uint8))  # the camera frame's own edge is no picture's
    grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(cv2.GaussianBlur(grey, (3, 3), 0), *rule.canny)
    edges[inside == 0] = 0
    f = size * scale  # the face's side in the region's pixels; the face is centred
    c = rule.work_px / 2.0
    x0, x1, y0, y1 = c - f / 2, c + f / 2, c - f / 2, c + f / 2
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=int(0.3 * f),
                            minLineLength=int(rule.min_segment * f), maxLineGap=max(2, int(0.1 * f)))
    if lines is None:
        return set()
    gap, gap_below = rule.max_gap * f, rule.max_gap_below * f
    tilt = math.tan(math.radians(rule.max_tilt_deg))
    # Per side, the stretch of the face's extent that straight edges there run alongside: a
    # picture's edge is often found in pieces (glare, a thumb, a bend), so pieces add up.
    cover: dict[str, list[tuple[float, float]]] = {"top": [], "bottom": [], "left": [], "right": []}
    for ax, ay, bx, by in lines.reshape(-1, 4).astype(np.float64):
        dx, dy = abs(bx - ax), abs(by - ay)
        if dy <= tilt * dx:  # horizontal: above or below the face
            y = (ay + by) / 2
            side = "top" if y0 - gap <= y < y0 else "bottom" if y1 < y <= y1 + gap_below else None
            span = (max(min(ax, bx), x0), min(max(ax, bx), x1))
        elif dx <= tilt * dy:  # vertical: left or right of the face
            x = (ax + bx) / 2
            side = "left" if x0 - gap <= x < x0 else "right" if x1 < x <= x1 + gap else None
            span = (max(min(ay, by), y0), min(max(ay, by), y1))
        else:
            continue
        if side is not None and span[1] > span[0]:
            cover[side].append(span)
    return {side for side, spans in cover.items() if _union(spans) >= rule.min_span * f}


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def _padding(region: npt.NDArray[Any], inside: npt.NDArray[Any], dark: int = 6) -> npt.NDArray[np.bool_]:
    """Near-black areas of `region` that reach its edge or the camera frame's: padding, not a scene."""
    mask = (region.max(axis=2) <= dark).astype(np.uint8)
    if not mask.any():
        return np.zeros(mask.shape, np.bool_)
    n, labels = cv2.connectedComponents(mask, connectivity=4)
    edge = np.zeros_like(mask, bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    edge |= cv2.dilate((inside == 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    touching = np.zeros(n, bool)
    touching[np.unique(labels[edge & (mask > 0)])] = True
    touching[0] = False  # label 0 is everything not dark
    padding: npt.NDArray[np.bool_] = touching[labels]
    return padding
