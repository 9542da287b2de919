"""MediaPipe Tasks face detection. MediaPipe types never leave this module."""

from __future__ import annotations

import importlib
import logging
import sys
import weakref
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from accessd.nativelog import quiet_native
from accessd.types import Face, Image

log = logging.getLogger(__name__)


class DetectorError(RuntimeError):
    pass


def import_mediapipe_tasks() -> tuple[ModuleType, Any, ModuleType]:
    """`mediapipe`, its vision tasks and base options, without TensorFlow.

    MediaPipe imports TensorFlow whenever it is installed, for two optional
    conveniences it falls back from when the import fails (file access in its
    metadata module, doc decorators). TensorFlow alone is about 600 MB and
    seconds of start-up, which a door process does not need. So TensorFlow is
    made unimportable while MediaPipe is imported, then importable again: a
    training process that wants it later still gets it, and one that already
    loaded it is left alone.
    """
    hide = "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # `import tensorflow` -> ModuleNotFoundError
    stubs = _defer_pyplot()
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options
    finally:
        if hide and sys.modules.get("tensorflow", ...) is None:
            del sys.modules["tensorflow"]
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]
    return mp, vision, base_options


class _Deferred(ModuleType):
    """Stands in for a module until one of its names is used; then imports the real one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__name__), name)


def _defer_pyplot() -> dict[str, ModuleType]:
    """Stand-ins for `matplotlib` and `matplotlib.pyplot` while MediaPipe is imported.

    MediaPipe's `vision/drawing_utils.py` imports pyplot at import time for drawing
    helpers a door never calls: +41 MB and 0.25 s per process. Its `plt` becomes a
    stand-in that imports the real pyplot on first use, so the helpers still work;
    the stand-ins leave `sys.modules` after the import. A process that already
    loaded matplotlib is left alone.
    """
    if "matplotlib" in sys.modules:
        return {}
    package, pyplot = _Deferred("matplotlib"), _Deferred("matplotlib.pyplot")
    package.pyplot = pyplot  # type: ignore[attr-defined]  # `import matplotlib.pyplot as plt` reads this
    stubs: dict[str, ModuleType] = {"matplotlib": package, "matplotlib.pyplot": pyplot}
    sys.modules.update(stubs)
    return stubs


# LiteRT prints this once per process, at the first input tensor that happens to be
# unaligned: not always the first frame (in one CI run, the second photo of `verify`).
ALIGNMENT_NOTICE = "memory is not aligned"


def _close_detector(detector: Any) -> None:
    try:
        with quiet_native("mediapipe"):
            detector.close()
    except RuntimeError:
        # At exit, after concurrent.futures has shut its executors down ("cannot schedule new futures
        # after shutdown"): the process is ending and frees everything. Forget the handle, or
        # MediaPipe's __del__ tries again later and prints a traceback.
        detector._handle = None


class FaceDetector:
    """BlazeFace through `mediapipe.tasks.python.vision.FaceDetector` in IMAGE mode.

    IMAGE mode keeps each call independent, so frames dropped by the capture
    thread or a restarted stream never trip MediaPipe's monotonic-timestamp rule.
    One instance is used by one thread at a time.
    """

    # Detections are captured (accessd.nativelog) until that notice has been seen, or for at
    # most this many calls in the process: a capture costs a few syscalls and serialises
    # detectors on different threads, and after start-up nothing else is known to print.
    _quiet_detects_left = 1000

    def __init__(self, model_path: Path, min_confidence: float = 0.5) -> None:
        if not model_path.is_file():
            raise DetectorError(
                f"detector model {model_path} not found; run `python -m accessd.provision`"
            )
        # Imported here, not at module level: no work at import time, and the config
        # checker and unit tests of other stages do not pay MediaPipe's start-up.
        with quiet_native("mediapipe"):
            self._mp, vision, base_options = import_mediapipe_tasks()

        options = vision.FaceDetectorOptions(
            base_options=base_options.BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=min_confidence,
        )
        try:
            with quiet_native("mediapipe"):  # LiteRT's start-up notices, 60 lines per detector
                self._detector = vision.FaceDetector.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise DetectorError(f"cannot load detector model {model_path}: {exc}") from exc
        self.model_path = model_path
        # MediaPipe closes an unclosed detector in its __del__, which at interpreter shutdown runs after
        # its C bindings are gone and prints a TypeError traceback per detector. Every owner closes its
        # detector; this finalizer is the net for one that did not (collected, or at exit), once.
        self._close = weakref.finalize(self, _close_detector, self._detector)
        log.info("face detector %s (min_confidence=%s)", model_path.name, min_confidence)

    def detect(self, image: Image) -> list[Face]:
        mp = self._mp

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DetectorError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        if FaceDetector._quiet_detects_left > 0:
            with quiet_native("mediapipe") as captured:
                result = self._detector.detect(mp_image)
            seen = any(ALIGNMENT_NOTICE in line for line in captured)
            FaceDetector._quiet_detects_left = 0 if seen else FaceDetector._quiet_detects_left - 1
        else:
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
        self._close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
