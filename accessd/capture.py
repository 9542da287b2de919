"""`accessd capture --headless`: enrol someone from the door camera itself.

Reads the configured (or given) source, and saves every Nth frame that holds
exactly one face as a photo in `verification_images/<person>/`: the face with
a generous margin, large enough for the enrolment path to detect it again.
The running daemon picks the photos up by itself.
"""

from __future__ import annotations

import logging
import threading
import time

import cv2

from accessd.config import Config
from accessd.detector import FaceDetector
from accessd.gallery import single_face
from accessd.provision import model_path
from accessd.source import open_source
from accessd.types import Face, Image

log = logging.getLogger(__name__)


def face_photo(image: Image, face: Face, margin: float = 0.8) -> Image:
    """The face with `margin` times its size around it, clipped to the frame."""
    h, w = image.shape[:2]
    pad_x, pad_y = face.width * margin, face.height * margin
    x0, y0 = max(0, int(face.x - pad_x)), max(0, int(face.y - pad_y))
    x1, y1 = min(w, int(face.x + face.width + pad_x)), min(h, int(face.y + face.height + pad_y))
    return image[y0:y1, x0:x1]


def capture_headless(config: Config, person: str, source_uri: str | None, every: int, count: int,
                     stop: threading.Event) -> int:
    if not person or "/" in person or person.startswith("."):
        log.error("--person must be a plain folder name (got %r)", person)
        return 2
    target = config.gallery.dir / person
    target.mkdir(parents=True, exist_ok=True)
    detector = FaceDetector(model_path(config.detector.models_dir, config.detector.model),
                            config.detector.min_confidence)
    source = open_source(source_uri or config.source.uri, config.source, stop)
    saved, seen = 0, 0
    try:
        while not stop.is_set() and saved < count:
            frame = source.read(timeout=0.5)
            if frame is None:
                if source.finished:
                    break
                continue
            face = single_face(detector.detect(frame.image))
            if isinstance(face, str):
                continue
            seen += 1
            if (seen - 1) % every:
                continue
            path = target / f"capture-{time.strftime('%Y%m%d-%H%M%S')}-{frame.index:06d}.jpg"
            crop = cv2.cvtColor(face_photo(frame.image, face), cv2.COLOR_RGB2BGR)
            if cv2.imwrite(str(path), crop):
                saved += 1
                log.info("saved %s (%d/%d)", path, saved, count)
            else:
                log.error("could not write %s", path)
    finally:
        source.close()
        detector.close()
    log.info("captured %d photos of %s into %s", saved, person, target)
    return 0 if saved else 1
