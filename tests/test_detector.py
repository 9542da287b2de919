from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from accessd.detector import DetectorError, FaceDetector
from accessd.imageio import read_image
from accessd.provision import MODELS, is_provisioned, model_path, sha256_file
from tests.conftest import DETECTORS, SAMPLES


@pytest.fixture(scope="module")
def detector() -> Iterator[FaceDetector]:
    with FaceDetector(model_path(DETECTORS, "full_range"), 0.5) as d:
        yield d


def test_provisioned_models_match_pinned_hashes() -> None:
    assert is_provisioned(DETECTORS)
    for name, m in MODELS.items():
        assert sha256_file(model_path(DETECTORS, name)) == m.sha256


@pytest.mark.parametrize(("photo", "count"), [("obama.jpg", 1), ("biden.jpg", 1), ("two_people.jpg", 2),
                                               ("obama-1080p.jpg", 1), ("32bit.png", 1)])
def test_real_photos(detector: FaceDetector, photo: str, count: int) -> None:
    faces = detector.detect(read_image(SAMPLES / photo))
    # 32bit.png has people far behind Obama: count the clearly visible faces.
    big = [f for f in faces if f.width > 60]
    assert len(big) == count, faces
    for f in big:
        assert len(f.keypoints) == 6 and 0 < f.confidence <= 1


def test_two_people_left_to_right(detector: FaceDetector) -> None:
    faces = sorted(detector.detect(read_image(SAMPLES / "two_people.jpg")), key=lambda f: f.x)
    assert len(faces) == 2 and faces[0].x + faces[0].width < faces[1].x


def test_blank_image_has_no_face(detector: FaceDetector) -> None:
    assert detector.detect(np.full((480, 640, 3), 127, np.uint8)) == []


def test_bad_input_and_missing_model(detector: FaceDetector, tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="HxWx3"):
        detector.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(DetectorError, match="accessd.provision"):
        FaceDetector(tmp_path / "nope.tflite")


def test_short_range_misses_small_faces_at_720p_where_full_range_finds_them() -> None:
    # Why full_range is the default: ~95 px LFW faces in a 1280x720 frame (1-2 m from a door camera).
    from accessd.bench import bench_frame

    people = sorted(p for p in (SAMPLES.parent / "lfw").iterdir() if p.is_dir())[:10]
    frames = [bench_frame(read_image(sorted(p.glob("*.jpg"))[0]), 1280, 720) for p in people]
    found = {}
    for name in ("full_range", "short_range"):
        with FaceDetector(model_path(DETECTORS, name), 0.6) as det:
            found[name] = sum(1 for f in frames if det.detect(f))
    assert found["full_range"] >= 9 and found["short_range"] <= 5, found


def test_the_daemon_process_never_loads_tensorflow(tmp_path: Path) -> None:
    """TensorFlow is installed beside the daemon (training needs it); the door must not load it."""
    import signal
    import time

    from tests.conftest import TRAINED_MODEL
    from tests.test_daemon import start_without_camera

    proc = start_without_camera(tmp_path, TRAINED_MODEL)
    try:
        maps = ""
        deadline = time.monotonic() + 60
        # Ready once the detector and the model are loaded: both their libraries are mapped.
        while time.monotonic() < deadline and not ("onnxruntime" in maps and "mediapipe" in maps):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.5)
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        time.sleep(2)  # a few loop iterations with the camera down
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert "mediapipe" in maps and "onnxruntime" in maps, "the test must see the real detector and model loaded"
    assert "tensorflow" not in maps.lower(), [line for line in maps.splitlines() if "tensorflow" in line.lower()][:3]


def test_tensorflow_stays_importable_after_the_detector(tmp_path: Path) -> None:
    """Training builds detectors and then imports TensorFlow in the same process."""
    from tests.conftest import run_py

    code = ("from pathlib import Path; from accessd.detector import FaceDetector; import sys; "
            "d = FaceDetector(Path('models/detector/face_detection_full_range_sparse.tflite')); "
            "assert 'tensorflow' not in sys.modules; import tensorflow as tf; print(tf.__version__)")
    result = run_py("-c", code)
    assert result.stdout.strip()


def test_matplotlib_waits_until_a_drawing_helper_is_used() -> None:
    """MediaPipe imports pyplot for drawing helpers the door never calls (+41 MB per process): deferred."""
    from tests.conftest import run_py

    code = ("from pathlib import Path; import sys; from accessd.detector import FaceDetector; "
            "d = FaceDetector(Path('models/detector/face_detection_full_range_sparse.tflite')); "
            "print('matplotlib' in sys.modules); "
            "from mediapipe.tasks.python.vision import drawing_utils; "
            "print(drawing_utils.plt.figure.__module__, 'matplotlib.pyplot' in sys.modules)")
    result = run_py("-c", code)
    # Not loaded by the detector; the helpers still get the real pyplot on first use.
    assert result.stdout.split() == ["False", "matplotlib.pyplot", "True"], result.stdout


def test_no_traceback_at_exit_with_detectors_left_open() -> None:
    """MediaPipe's __del__ at interpreter shutdown once printed a TypeError traceback per open detector."""
    from tests.conftest import run_py

    code = ("from pathlib import Path; from accessd.detector import FaceDetector; "
            "kept = [FaceDetector(Path('models/detector/face_detection_full_range_sparse.tflite')) for _ in range(2)]")
    result = run_py("-c", code)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr[-2000:]
