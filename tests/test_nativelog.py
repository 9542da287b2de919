"""Native libraries' stderr goes through accessd's logging: quiet by default, errors kept."""

from __future__ import annotations

import json
import re

from tests.conftest import SAMPLES, run_py

OWN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) accessd[.\w]*: ")


def only_own_lines(stderr: str) -> list[str]:
    """The stderr lines that are not accessd's own log lines (should be none)."""
    return [line for line in stderr.splitlines() if line.strip() and not OWN_LINE.match(line)]


def test_verify_prints_its_json_and_no_native_noise() -> None:
    result = run_py("-m", "accessd", "verify", str(SAMPLES / "obama.jpg"), str(SAMPLES / "obama3.jpg"))
    assert json.loads(result.stdout)["match"] is True and len(result.stdout.splitlines()) == 1
    assert only_own_lines(result.stderr) == [], result.stderr[-2000:]
    assert "Sparsity tensors" not in result.stderr


def test_native_chatter_is_debug_and_native_errors_reach_the_log() -> None:
    code = ("import logging, os\n"
            "from accessd.nativelog import route_native_stderr\n"
            "route_native_stderr()\n"
            "logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')\n"
            "os.write(2, b'I0000 00:00 1 chatter.cc:1] just saying\\nE0000 00:00 1 graph.cc:9] it broke\\n')\n")
    result = run_py("-c", code)
    assert "ERROR accessd.native: E0000 00:00 1 graph.cc:9] it broke" in result.stderr
    assert "just saying" not in result.stderr
    assert only_own_lines(result.stderr) == [], result.stderr


def test_a_native_flood_while_holding_the_gil_cannot_hang_the_process() -> None:
    """4 MB written to fd 2 by C code that holds the GIL (as pybind11 code does): the reader
    thread cannot run, so a blocking pipe would hang the door for good (it did, in CI)."""
    code = ("import ctypes, logging\n"
            "from accessd.nativelog import route_native_stderr\n"
            "route_native_stderr()\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "libc = ctypes.PyDLL(None)\n"
            "line = b'W0000 flood ' + b'x' * 200 + b'\\n'\n"
            "for _ in range(20000):\n"
            "    libc.write(2, line, len(line))\n"
            "print('survived')\n")
    result = run_py("-c", code, timeout=60)
    assert result.stdout.strip() == "survived"
