"""`accessd capture`: collect face photos from the door camera itself.

Window mode (the seed tutorials' data-collection tool): `a` saves the face in
view to `<data-dir>/anchor/`, `p` to `<data-dir>/positive/` (the layout
`train/` reads), `c` toggles automatic capture into
`verification_images/<person>/` (enrolment), `q` or closing the window quits.
Headless mode saves every Nth frame that shows exactly one face into
`verification_images/<person>/` and stops after `count` photos.

Either way a photo is the face with a generous margin, large enough for the
enrolment and training paths to detect it again; the running daemon picks up
gallery photos by itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import cast

import cv2

from accessd.config import Config
from accessd.detector import FaceDetector
from accessd.gallery import single_face
from accessd.imageio import decode_image
from accessd.provision import model_path
from accessd.source import FrameSource, open_source
from accessd.types import Face, Image

log = logging.getLogger(__name__)

WINDOW = "accessd capture"
GREEN, GREY = (0, 200, 0), (160, 160, 160)
SYSTEM_FONTS = "/usr/share/fonts/truetype/dejavu"


def face_photo(image: Image, face: Face, margin: float = 0.8) -> Image:
    """The face with `margin` times its size around it, clipped to the frame."""
    h, w = image.shape[:2]
    pad_x, pad_y = face.width * margin, face.height * margin
    x0, y0 = max(0, int(face.x - pad_x)), max(0, int(face.y - pad_y))
    x1, y1 = min(w, int(face.x + face.width + pad_x)), min(h, int(face.y + face.height + pad_y))
    return image[y0:y1, x0:x1]


class Capturer:
    """Finds the one face in a frame and saves it into a folder; both modes use it."""

    def __init__(self, config: Config, source_uri: str | None, stop: threading.Event, every: int) -> None:
        self.detector = FaceDetector(model_path(config.detector.models_dir, config.detector.model),
                                     config.detector.min_confidence)
        try:
            self.source: FrameSource = open_source(source_uri or config.source.uri, config.source, stop)
        except Exception:
            self.detector.close()
            raise
        self.saved: dict[Path, int] = {}
        self.every = every
        self.wait = 0  # face frames to skip before the next automatic save

    def face(self, image: Image) -> Face | None:
        found = single_face(self.detector.detect(image))
        return None if isinstance(found, str) else found

    def save(self, folder: Path, image: Image, face: Face, index: int) -> Path | None:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(face_photo(image, face), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        # Only photos the enrolment path will accept, judged on the very bytes it will read:
        # a face found in the frame can fall just under the detector's confidence in its
        # compressed crop; the next frame will do.
        if not ok or self.face(decode_image(jpeg.tobytes())) is None:
            log.debug("frame %d: the face is not found again in its saved crop; not saved", index)
            return None
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"capture-{time.strftime('%Y%m%d-%H%M%S')}-{index:06d}.jpg"
        try:
            path.write_bytes(jpeg.tobytes())
        except OSError as exc:
            log.error("could not write %s: %s", path, exc.strerror or exc)
            return None
        self.saved[folder] = self.saved.get(folder, 0) + 1
        log.info("saved %s", path)
        return path

    def auto(self, folder: Path, image: Image, face: Face, index: int) -> None:
        """Save every `every`-th face frame; a frame whose photo is refused defers to the next."""
        if self.wait > 0:
            self.wait -= 1
        elif self.save(folder, image, face, index) is not None:
            self.wait = self.every - 1

    def close(self) -> None:
        self.source.close()
        self.detector.close()


def _person_dir(config: Config, person: str) -> Path | None:
    if not person or "/" in person or person.startswith("."):
        log.error("--person must be a plain folder name (got %r)", person)
        return None
    return config.gallery.dir / person


def capture_headless(config: Config, person: str, source_uri: str | None, every: int, count: int,
                     stop: threading.Event) -> int:
    target = _person_dir(config, person)
    if target is None:
        return 2
    capturer = Capturer(config, source_uri, stop, every)
    try:
        while not stop.is_set() and capturer.saved.get(target, 0) < count:
            frame = capturer.source.read(timeout=0.5)
            if frame is None:
                if capturer.source.finished:
                    break
                continue
            face = capturer.face(frame.image)
            if face is not None:
                capturer.auto(target, frame.image, face, frame.index)
    finally:
        capturer.close()
    saved = capturer.saved.get(target, 0)
    log.info("captured %d photos of %s into %s", saved, person, target)
    return 0 if saved else 1


def _draw(image: Image, face: Face | None, status: str) -> Image:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if face is not None:
        p0, p1 = (int(face.x), int(face.y)), (int(face.x + face.width), int(face.y + face.height))
        cv2.rectangle(bgr, p0, p1, GREEN, 2)
    cv2.putText(bgr, status, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, GREEN if face else GREY, 1, cv2.LINE_AA)
    return cast(Image, bgr)


def capture_window(config: Config, person: str, source_uri: str | None, every: int, data_dir: Path,
                   stop: threading.Event) -> int:
    target = _person_dir(config, person)
    if target is None:
        return 2
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        log.error("no display to open a window on (DISPLAY is not set); use --headless")
        return 2
    if Path(SYSTEM_FONTS).is_dir():  # OpenCV's bundled Qt ships no fonts and complains on every draw
        os.environ.setdefault("QT_QPA_FONTDIR", SYSTEM_FONTS)
    folders = {ord("a"): data_dir / "anchor", ord("p"): data_dir / "positive"}
    capturer = Capturer(config, source_uri, stop, every)
    auto = False
    image, face, index = None, None, 0
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
        while not stop.is_set():
            frame = capturer.source.read(timeout=0.02)
            if frame is not None:  # a finished video keeps its last frame on screen until `q`
                image, index = frame.image, frame.index
                face = capturer.face(image)
                if auto and face is not None:
                    capturer.auto(target, image, face, index)
            if image is not None:
                counts = " ".join(f"{p.name} {capturer.saved.get(p, 0)}" for p in (*folders.values(), target))
                status = f"auto {'ON' if auto else 'off'} | {counts} | a p c q"
                cv2.imshow(WINDOW, _draw(image, face, status))
            key = cv2.waitKey(20) & 0xFF
            if key == ord("q") or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                break
            if key == ord("c"):
                auto, capturer.wait = not auto, 0
                log.info("automatic capture into %s %s", target, "on" if auto else "off")
            elif key in folders:
                if image is None or face is None or capturer.save(folders[key], image, face, index) is None:
                    log.warning("no clear single face in view; nothing saved, try again")
    finally:
        cv2.destroyAllWindows()
        capturer.close()
    log.info("captured %s", ", ".join(f"{n} into {p}" for p, n in capturer.saved.items()) or "nothing")
    return 0
