"""Session fixtures: real data from ../shared, a tiny Siamese model trained and exported once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ACCESSD_SHARED", REPO.parent / "shared"))
LFW = SHARED / "data/lfw"
SAMPLES = SHARED / "data/samples"
PROTOCOL = SHARED / "data/lfw-protocol"
DETECTORS = REPO / "models/detector"
TRAINED_MODEL = REPO / "models/accessd-fused.onnx"


def without_root_bypass(argv: list[str]) -> list[str]:
    """`argv` run so that file permissions apply: as root, without the capabilities that
    bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH); as anyone else, unchanged."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): cannot make permissions apply")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *argv]


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass  # test servers stay out of pytest's output


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 (a free port), served on a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def terminate(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM and wait, as systemd stops a service; killed if it outlasts `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    finally:
        proc.kill()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_py(*args: str, cwd: Path = REPO, timeout: float = 600, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "ACCESSD_SHARED": str(SHARED), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=full_env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{quiet(result.stderr)}")
    return result


NOISE = ("WARNING: [", "Sparsity tensors", "I0000 ", "W0000 ", "E0000 ", "WARNING: All log", "To enable the following", "INFO: [")


def quiet(stderr: str) -> str:
    """stderr without TensorFlow/LiteRT start-up chatter, for readable failures."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith(NOISE))[-4000:]


@pytest.fixture(scope="session", autouse=True)
def _shared_present() -> None:
    assert LFW.is_dir(), f"tests need the shared data at {SHARED} (set ACCESSD_SHARED)"
    assert (DETECTORS / "face_detection_full_range_sparse.tflite").is_file(), \
        "detector models missing: run `python -m accessd.provision`"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A compact Siamese model trained for a few steps on 30 LFW people (a real Keras checkpoint)."""
    out = tmp_path_factory.mktemp("tiny_run")
    run_py("-m", "train.train", "--data", str(LFW), "--out", str(out), "--max-people", "30",
           "--epochs", "1", "--pairs-per-epoch", "64", "--batch-size", "16", "--checkpoint-every", "1",
           "--cache-dir", str(cache_dir), "--workers", "1")
    assert (out / "checkpoint.keras").is_file()
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_run: Path) -> Path:
    """The tiny checkpoint exported to ONNX with export/to_onnx.py (parity-checked there)."""
    onnx_path = tiny_run / "tiny.onnx"
    run_py("export/to_onnx.py", str(tiny_run / "checkpoint.keras"), str(onnx_path))
    return onnx_path


@pytest.fixture(scope="session")
def trained_model() -> Path:
    assert TRAINED_MODEL.is_file(), f"the shipped model {TRAINED_MODEL} is missing"
    return TRAINED_MODEL
