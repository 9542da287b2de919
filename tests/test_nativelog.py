"""Native libraries' start-up chatter goes through accessd's logging: quiet by default, errors kept."""

from __future__ import annotations

import json
import re

from tests.conftest import SAMPLES, run_py

OWN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) accessd[.\w]*: ")

ANY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [.\w]+: ")


def only_own_lines(stderr: str) -> list[str]:
    """The stderr lines that are not accessd's own log lines (should be none)."""
    return [line for line in stderr.splitlines() if line.strip() and not OWN_LINE.match(line)]


def test_verify_prints_its_json_and_nothing_else() -> None:
    result = run_py("-m", "accessd", "verify", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama3.jpg"))
    assert json.loads(result.stdout)["match"] is True and len(result.stdout.splitlines()) == 1
    assert result.stderr == ""


def test_verify_at_debug_shows_the_native_notices_as_our_log_lines() -> None:
    result = run_py("-m", "accessd", "--log-level", "DEBUG", "verify",
                    str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama3.jpg"))
    assert "DEBUG accessd.native: mediapipe: " in result.stderr and "Sparsity tensors" in result.stderr
    # At DEBUG other Python libraries log too (matplotlib, imported by MediaPipe); no line is raw native output.
    raw = [line for line in result.stderr.splitlines() if line.strip() and not ANY_LOG_LINE.match(line)]
    assert raw == [], raw[:5]


_SCRIPT = """
import logging, os, threading
from accessd.nativelog import quiet_native, separate_python_stderr
separate_python_stderr()
logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
other = logging.getLogger('accessd.other')
with quiet_native('lib'):
    os.write(2, b'I0000 00:00 1 chatter.cc:1] just saying\\nE0000 00:00 1 graph.cc:9] it broke\\n')
    # Another thread logging while fd 2 is captured: our line must still reach stderr as itself.
    t = threading.Thread(target=other.info, args=('from another thread',)); t.start(); t.join()
os.write(2, b'after the block\\n')
"""


def test_chatter_is_debug_errors_reach_the_log_and_our_lines_are_never_captured() -> None:
    result = run_py("-c", _SCRIPT)
    assert "ERROR accessd.native: lib: E0000 00:00 1 graph.cc:9] it broke" in result.stderr
    assert "just saying" not in result.stderr
    assert "INFO accessd.other: from another thread" in result.stderr
    assert "native" not in result.stderr.split("from another thread")[0].splitlines()[-1]
    # Outside a capture, native output reaches stderr untouched (a late native error is not lost).
    assert only_own_lines(result.stderr) == ["after the block"], result.stderr


def test_a_native_flood_while_holding_the_gil_cannot_hang_the_process() -> None:
    """4 MB written to fd 2 by C code that holds the GIL (as pybind11 code does) inside a capture."""
    code = ("import ctypes, logging\n"
            "from accessd.nativelog import quiet_native, separate_python_stderr\n"
            "separate_python_stderr()\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "libc = ctypes.PyDLL(None)\n"
            "line = b'W0000 flood ' + b'x' * 200 + b'\\n'\n"
            "with quiet_native('flood'):\n"
            "    for _ in range(20000):\n"
            "        libc.write(2, line, len(line))\n"
            "print('survived')\n")
    result = run_py("-c", code, timeout=60)
    assert result.stdout.strip() == "survived" and "flood" not in result.stderr


def test_the_alignment_notice_is_captured_whichever_detection_prints_it() -> None:
    """LiteRT's one-off alignment notice comes at the first unaligned input: once, in CI, at
    `verify`'s second photo. Forty detections of odd-sized frames print nothing raw."""
    code = ("import logging\n"
            "import numpy as np\n"
            "from pathlib import Path\n"
            "from accessd.nativelog import separate_python_stderr\n"
            "separate_python_stderr()\n"
            "logging.basicConfig(level=logging.DEBUG, format='%(asctime)s %(levelname)s %(name)s: %(message)s')\n"
            "from accessd.detector import FaceDetector\n"
            "rng = np.random.default_rng(1)\n"
            "with FaceDetector(Path('models/detector/face_detection_full_range_sparse.tflite')) as det:\n"
            "    for _ in range(40):\n"
            "        h, w = rng.integers(101, 641, 2)\n"
            "        det.detect(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))\n")
    result = run_py("-c", code)
    raw = [line for line in result.stderr.splitlines() if line.strip() and not ANY_LOG_LINE.match(line)]
    assert raw == [], raw[:5]
    assert "memory is not aligned" in result.stderr  # printed once, and logged as ours
