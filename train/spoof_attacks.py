"""Synthesised presentation attacks: a picture of an enrolled person, held before a door camera.

There is no real attack footage here; every attack is made from real frames
of the shared live clip (`webcam_face.mp4`) and said to be synthesised
wherever it is reported. Species, as ISO/IEC 30107 calls them:

- `print_still`: a printed photo (white paper margin) held still on a stand;
- `print_hand`: the same print held by hand: drift, roll, tilt (perspective), tremor;
- `print_bent`: the print bent into a curve as a hand holding it would, and moved;
- `print_eyes_cut`: the print with its eyes cut out and a live person's eyes behind the holes;
- `phone_photo`: the photo on a phone's screen (black bezel, screen gamma, glare), held by hand;
- `phone_video`: the live clip itself replayed on the phone, held by hand.

Each attack is a list of 640 x 480 RGB frames over a synthetic wall; the
picture's face is about the size of a person's 60 cm to 1 m from the camera.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from accessd.types import Face, Image

SPECIES = ("print_still", "print_hand", "print_bent", "print_eyes_cut", "phone_photo", "phone_video")
WIDTH, HEIGHT = 640, 480


@dataclass(frozen=True)
class ClipFrame:
    image: Image  # RGB, the clip's frame
    face: Face  # the detector's face in it


def wall(rng: np.random.Generator) -> Image:
    """A plain indoor wall: a soft gradient with low-frequency blotches and sensor-like grain."""
    base = rng.uniform(90, 190, 3)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    grad = (xx / WIDTH - 0.5) * rng.uniform(-40, 40) + (yy / HEIGHT - 0.5) * rng.uniform(-40, 40)
    blotch = cv2.resize(rng.normal(0, 12, (6, 8)).astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    img = base[None, None, :] + (grad + blotch)[:, :, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def portrait(frame: ClipFrame, zoom: float = 2.3, framing: Face | None = None) -> Image:
    """The photo that gets printed or shown: the face and shoulders, 3:4, from one clip frame
    (framed on `framing`, another frame's face, for a video whose head moves within the screen)."""
    f = framing or frame.face
    side = max(f.width, f.height) * zoom
    cx, cy = f.center
    w, h = side, side * 4 / 3
    x0, y0 = cx - w / 2, cy - h * 0.42
    src = np.float32([[x0, y0], [x0 + w, y0], [x0, y0 + h]])
    dst = np.float32([[0, 0], [300, 0], [0, 400]])
    return cv2.warpAffine(frame.image, cv2.getAffineTransform(src, dst), (300, 400), borderMode=cv2.BORDER_REFLECT)


def as_print(photo: Image, margin: float = 0.07) -> tuple[Image, Image]:
    """(sheet, mask): the photo on white paper with a margin, slightly washed out as prints are."""
    h, w = photo.shape[:2]
    m = round(margin * w)
    sheet = np.full((h + 2 * m, w + 2 * m, 3), 238, np.uint8)
    ink = (photo.astype(np.float32) * 0.85 + 25).clip(0, 255).astype(np.uint8)
    sheet[m:m + h, m:m + w] = ink
    return sheet, np.full(sheet.shape[:2], 255, np.uint8)


def as_phone(screen: Image, bezel: float = 0.06, rng: np.random.Generator | None = None) -> tuple[Image, Image]:
    """(device, mask): the picture on a phone's screen inside a black rounded bezel, with gamma and glare."""
    h, w = screen.shape[:2]
    b = round(bezel * w)
    device = np.full((h + 2 * b, w + 2 * b, 3), 18, np.uint8)
    lit = (255.0 * (screen.astype(np.float32) / 255.0) ** 0.9 * 0.92 + 10).clip(0, 255)
    if rng is not None:  # a soft reflection of a window across the glass
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        band = np.exp(-(((xx - w / 2) * math.cos(angle) + (yy - h / 2) * math.sin(angle)) / (0.25 * w)) ** 2)
        lit = (lit + rng.uniform(10, 35) * band[:, :, None]).clip(0, 255)
    device[b:b + h, b:b + w] = lit.astype(np.uint8)
    mask = np.zeros(device.shape[:2], np.uint8)
    r = int(1.6 * b)
    cv2.rectangle(mask, (r, 0), (device.shape[1] - r, device.shape[0]), 255, -1)
    cv2.rectangle(mask, (0, r), (device.shape[1], device.shape[0] - r), 255, -1)
    right, bottom = device.shape[1] - r, device.shape[0] - r
    for cx, cy in ((r, r), (right, r), (r, bottom), (right, bottom)):
        cv2.circle(mask, (cx, cy), r, 255, -1)
    return device, mask


def bend(sheet: Image, mask: Image, amount: float) -> tuple[Image, Image]:
    """The sheet curved about its vertical axis (a hand bending a print): edges recede and narrow."""
    h, w = sheet.shape[:2]
    xs = np.linspace(-1, 1, w, dtype=np.float32)
    # Seen from the front, a cylinder's surface compresses towards its edges.
    src_x = (np.arcsin(np.clip(xs * math.sin(amount), -1, 1)) / max(amount, 1e-6) + 1) * (w - 1) / 2
    map_x = np.tile(src_x, (h, 1)).astype(np.float32)
    shade = (1.0 - 0.25 * (1 - np.cos(xs * amount)))[None, :, None]
    map_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    bent = cv2.remap(sheet, map_x, map_y, cv2.INTER_LINEAR)
    bent_mask = cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST)
    return (bent.astype(np.float32) * shade).clip(0, 255).astype(np.uint8), bent_mask


@dataclass(frozen=True)
class Pose:
    cx: float
    cy: float
    height: float  # the object's height on screen, in pixels
    roll: float  # degrees
    yaw: float  # degrees, turning about the vertical axis (perspective)
    pitch: float  # degrees, about the horizontal axis


def place(background: Image, obj: Image, mask: Image, pose: Pose) -> Image:
    """`obj` composited onto `background` at `pose`, with perspective for yaw and pitch."""
    h, w = obj.shape[:2]
    s = pose.height / h
    corners = np.float32([[-w / 2, -h / 2, 0], [w / 2, -h / 2, 0], [w / 2, h / 2, 0], [-w / 2, h / 2, 0]]) * s
    ry, rp, rr = (math.radians(a) for a in (pose.yaw, pose.pitch, pose.roll))
    rot_y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(rp), -math.sin(rp)], [0, math.sin(rp), math.cos(rp)]])
    rot_z = np.array([[math.cos(rr), -math.sin(rr), 0], [math.sin(rr), math.cos(rr), 0], [0, 0, 1]])
    pts = corners @ (rot_z @ rot_x @ rot_y).T
    focal = 700.0
    depth = focal + pts[:, 2]
    proj = np.float32(np.stack([pose.cx + pts[:, 0] * focal / depth, pose.cy + pts[:, 1] * focal / depth], 1))
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    homography = cv2.getPerspectiveTransform(src, proj)
    warped = cv2.warpPerspective(obj, homography, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(mask, homography, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)[:, :, None] / 255.0
    return (background * (1 - alpha) + warped * alpha).astype(np.uint8)


def hand_poses(n: int, fps: float, rng: np.random.Generator, height: float, still: bool) -> list[Pose]:
    """A held object's path: slow drift and sway plus tremor; a stand keeps it nearly still."""
    cx, cy = WIDTH / 2 + rng.uniform(-60, 60), HEIGHT / 2 + rng.uniform(-20, 30)
    phase = rng.uniform(0, 2 * math.pi, 4)
    out = []
    for i in range(n):
        t = i / fps
        if still:
            j = rng.normal(0, 0.3, 2)
            out.append(Pose(cx + j[0], cy + j[1], height, 0.0, 0.0, 0.0))
            continue
        out.append(Pose(
            cx + 25 * math.sin(0.7 * t + phase[0]) + rng.normal(0, 1.5),
            cy + 15 * math.sin(0.9 * t + phase[1]) + rng.normal(0, 1.5),
            height * (1 + 0.06 * math.sin(0.5 * t + phase[2])),
            6 * math.sin(0.8 * t + phase[3]) + rng.normal(0, 0.5),
            15 * math.sin(0.6 * t + phase[1]) + rng.normal(0, 0.8),
            10 * math.sin(0.75 * t + phase[0]) + rng.normal(0, 0.8),
        ))
    return out


def sensor(frame: Image, rng: np.random.Generator) -> Image:
    return np.clip(frame.astype(np.float32) + rng.normal(0, 2.5, frame.shape), 0, 255).astype(np.uint8)


def eyes_behind_holes(printed: Image, photo_frame: ClipFrame, live: ClipFrame, margin_px: int) -> Image:
    """The print with its two eye regions cut out, and the live person's eyes showing through."""
    out = printed.copy()
    live_photo = portrait(live)
    pf = photo_frame.face
    side = max(pf.width, pf.height) * 2.3
    sx = 300 / side
    cx, cy = pf.center
    x0, y0 = cx - side / 2, cy - side * 4 / 3 * 0.42
    for ex, ey in pf.keypoints[:2]:
        px, py = (ex - x0) * sx + margin_px, (ey - y0) * sx + margin_px
        r = int(0.09 * 300)
        ya, yb, xa, xb = int(py - r * 0.6), int(py + r * 0.6), int(px - r), int(px + r)
        ya, xa = max(ya, 0), max(xa, 0)
        region = live_photo[ya - margin_px:yb - margin_px, xa - margin_px:xb - margin_px]
        if region.shape[:2] == (yb - ya, xb - xa):
            out[ya:yb, xa:xb] = region
    return out


def attack(species: str, frames: list[ClipFrame], photo_index: int, start: int, n: int, fps: float,
           rng: np.random.Generator) -> list[Image]:
    """`n` camera frames of one attempt of `species`; `photo_index` is the clip frame printed or shown,
    `start` where a replay (or the live eyes behind a cut print) begins in the clip."""
    return list(attack_frames(species, frames, photo_index, start, n, fps, rng))


def attack_frames(species: str, frames: list[ClipFrame], photo_index: int, start: int, n: int, fps: float,
                  rng: np.random.Generator) -> Iterator[Image]:
    """`attack`, one frame at a time: an evaluation that has its answer stops early."""
    background = wall(rng)
    photo = portrait(frames[photo_index])
    height = rng.uniform(300, 380)  # the picture's height on screen; its face is then 110-150 px
    poses = hand_poses(n, fps, rng, height, still=species == "print_still")
    step = max(1, round(30 / fps))

    def live(i: int) -> ClipFrame:
        return frames[(start + i * step) % len(frames)]

    make: Callable[[int], tuple[Image, Image]]
    if species in ("print_still", "print_hand"):
        sheet = as_print(photo)
        make = lambda i: sheet  # noqa: E731
    elif species == "print_bent":
        base, base_mask = as_print(photo)
        amount = rng.uniform(0.5, 0.9)
        make = lambda i: bend(base, base_mask, amount * (0.8 + 0.2 * math.sin(i / fps * 1.3)))  # noqa: E731
    elif species == "print_eyes_cut":
        printed, mask = as_print(photo)
        margin = (printed.shape[1] - photo.shape[1]) // 2
        make = lambda i: (eyes_behind_holes(printed, frames[photo_index], live(i), margin), mask)  # noqa: E731
    elif species == "phone_photo":
        device = as_phone(photo, rng=rng)
        make = lambda i: device  # noqa: E731
    elif species == "phone_video":
        glare, framing = int(rng.integers(1 << 30)), frames[start].face  # one glare, one framing per attempt
        make = lambda i: as_phone(portrait(live(i), framing=framing), rng=np.random.default_rng(glare))  # noqa: E731
    else:
        raise ValueError(f"unknown attack species {species!r}; one of {', '.join(SPECIES)}")
    for i, pose in enumerate(poses):
        obj, mask = make(i)
        yield sensor(place(background, obj, mask, pose), rng)
