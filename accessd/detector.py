"""MediaPipe Tasks face detection. MediaPipe types never leave this module."""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

import numpy as np

from accessd.types import Face, Image

log = logging.getLogger(__name__)


class DetectorError(RuntimeError):
    pass


class FaceDetector:
    """BlazeFace through `mediapipe.tasks.python.vision.FaceDetector` in IMAGE mode.

    IMAGE mode keeps each call independent, so frames dropped by the capture
    thread or a restarted stream never trip MediaPipe's monotonic-timestamp rule.
    One instance is used by one thread at a time.
    """

    def __init__(self, model_path: Path, min_confidence: float = 0.5) -> None:
        if not model_path.is_file():
            raise DetectorError(
                f"detector model {model_path} not found; run `python -m accessd.provision`"
            )
        # Imported here: mediapipe pulls in TensorFlow, seconds of start-up that
        # the config checker and unit tests of other stages should not pay.
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options

        options = vision.FaceDetectorOptions(
            base_options=base_options.BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=min_confidence,
        )
        try:
            self._detector = vision.FaceDetector.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise DetectorError(f"cannot load detector model {model_path}: {exc}") from exc
        self.model_path = model_path
        log.info("face detector %s (min_confidence=%s)", model_path.name, min_confidence)

    def detect(self, image: Image) -> list[Face]:
        import mediapipe as mp

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DetectorError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        result = self._detector.detect(mp_image)
        h, w = image.shape[:2]
        faces = []
        for det in result.detections:
            box = det.bounding_box
            score = det.categories[0].score if det.categories else 0.0
            keypoints = tuple((kp.x * w, kp.y * h) for kp in (det.keypoints or []))
            faces.append(
                Face(
                    x=float(box.origin_x),
                    y=float(box.origin_y),
                    width=float(box.width),
                    height=float(box.height),
                    confidence=float(score or 0.0),
                    keypoints=keypoints,
                )
            )
        return faces

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
