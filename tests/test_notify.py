"""sd_notify against a real AF_UNIX datagram socket; SIGHUP reload and SIGTERM on a live daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accessd.notify import Notifier
from tests.conftest import REPO, SHARED
from tests.test_daemon import PERSON, enrol, photos, write_config
from tests.test_source import MjpegCamera


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out


def test_notifier_protocol(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    assert n.enabled and n.watchdog_interval == pytest.approx(0.1)
    n.ready("3 people")
    n.watchdog()
    n.watchdog()  # within the interval: not sent again
    time.sleep(0.12)
    n.watchdog()
    n.stopping()
    assert drain(sock) == ["READY=1\nSTATUS=3 people", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]
    n.close()


def test_abstract_socket_and_disabled_notifier() -> None:
    name = f"accessd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"
    finally:
        sock.close()
    off = Notifier({})
    assert not off.enabled
    off.ready("ignored")  # no socket: a no-op, not an error


def wait_for(path: Path, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen in time:\n{path.read_text(errors='replace')[-3000:]}")


def test_live_daemon_ready_watchdog_reload_and_stop(tmp_path: Path, tiny_model: Path,
                                                    notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    # Read as systemd does, as they come: the socket queues only 10 datagrams.
    received: list[str] = []
    reading = threading.Event()

    def read() -> None:
        while not reading.is_set():
            received.extend(drain(sock))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    camera = MjpegCamera(frames_per_connection=100_000, fps=15)
    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:2])
    cfg = write_config(tmp_path / "config.yaml", tiny_model, source={"uri": camera.url},
                       gallery={"dir": str(gallery)}, audit={"path": str(tmp_path / "a.jsonl")})
    good = cfg.read_text()
    stderr = tmp_path / "stderr.log"
    env = {**os.environ, "ACCESSD_SHARED": str(SHARED), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg)], cwd=REPO,
                                stderr=err, env=env)
    try:
        wait_for(stderr, "running on")
        time.sleep(1.5)
        cfg.write_text(good + "decision:\n  margin: 5\nnonsense: 1\n")
        proc.send_signal(signal.SIGHUP)
        log = wait_for(stderr, "keeping the previous configuration")
        assert "reload refused: decision.margin: must be between 0 and 1 (got 5.0)" in log
        assert "reload refused: nonsense: unknown key" in log
        assert proc.poll() is None
        cfg.write_text(good + "decision:\n  verification_threshold: 0.7\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(stderr, "reloaded configuration: 2 enrolled photos of 1 people")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        camera.close()
    reading.set()
    reader.join(timeout=5)
    messages = received + drain(sock)
    assert messages[0].startswith("READY=1\nSTATUS=") and "gallery 2 photos of 1 people" in messages[0]
    assert "WATCHDOG=1" in messages and "RELOADING=1" in messages
    assert any(m.startswith("STATUS=") and "frames/s" in m for m in messages[1:])
    assert messages[-1] == "STOPPING=1"


LATE_S = 60.0  # the camera enumerates this long after the service started


def test_the_unit_survives_a_camera_that_appears_a_minute_late(tmp_path: Path, trained_model: Path,
                                                               notify_socket: tuple[socket.socket, str]) -> None:
    """As systemd runs it (Type=notify, the unit's WatchdogSec): READY at once, watchdog pings all through a
    minute without the camera (so systemd never kills it), no exit (so Restart= never gives up), and the
    camera's face is judged once it appears."""
    import uuid

    from tests.test_daemon import audit, write_video
    from tests.test_systemd import _unit_settings

    watchdog_s = float(_unit_settings()["WatchdogSec"][0])
    sock, path = notify_socket
    received: list[tuple[float, str]] = []
    reading = threading.Event()

    def read() -> None:
        while not reading.is_set():
            received.extend((time.monotonic(), m) for m in drain(sock))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:5])
    video = tmp_path / "late.avi"
    write_video(video, [photos(PERSON)[10:14]], 75)  # 300 frames: read as a camera, at the door's pace
    camera = Path("/dev/shm") / f"accessd-late-{uuid.uuid4().hex}.avi"  # a /dev path: a camera, not a file
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)},
                       audit={"path": str(tmp_path / "a.jsonl")},
                       source={"uri": str(camera), "reconnect_initial_s": 0.5, "reconnect_max_s": 5.0})
    stderr = tmp_path / "stderr.log"
    env = {**os.environ, "ACCESSD_SHARED": str(SHARED), "NOTIFY_SOCKET": path,
           "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg)], cwd=REPO,
                                stderr=err, env=env)
    try:
        wait_for(stderr, "running on")
        started = time.monotonic()
        while time.monotonic() - started < LATE_S:
            assert proc.poll() is None, stderr.read_text()[-3000:]
            time.sleep(1.0)
        os.symlink(video, camera)
        wait_for(stderr, "decision=grant", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        camera.unlink(missing_ok=True)
        reading.set()
        reader.join(timeout=5)
    messages = received + [(time.monotonic(), m) for m in drain(sock)]
    assert messages[0][1].startswith("READY=1")
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip([messages[0][0], *pings], pings, strict=False)]
    # Pinged every half WatchdogSec (as systemd advises), through the minute without a camera: systemd,
    # which kills the service after a whole WatchdogSec without one, never had cause to.
    assert pings and pings[-1] - messages[0][0] > LATE_S and max(gaps) < 0.6 * watchdog_s, (len(pings), max(gaps))
    assert [r["person"] for r in audit(tmp_path / "a.jsonl") if r["decision"] == "grant"] == [PERSON]
    log = stderr.read_text()
    assert f"source {camera}: cannot open; retrying" in log and "Traceback" not in log
