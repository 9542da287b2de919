"""Live sources against a real MJPEG-over-HTTP stream served on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import cv2
import numpy as np
import pytest

from accessd.config import SourceConfig
from accessd.source import LiveSource, VideoFileSource, display_name, open_source
from tests.conftest import LoopbackServer, QuietHandler


class MjpegCamera(LoopbackServer):
    """Serves `frames_per_connection` JPEG frames per connection, then hangs up (a camera that drops)."""

    def __init__(self, frames_per_connection: int = 15, fps: float = 30.0, bgr: np.ndarray | None = None,
                 basic_auth: str | None = None) -> None:
        self.connections = 0
        self.refused = 0
        expected = "Basic " + base64.b64encode(basic_auth.encode()).decode() if basic_auth else None
        frame = np.full((240, 320, 3), 100, np.uint8) if bgr is None else bgr
        jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
        camera = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if expected and self.headers.get("Authorization") != expected:
                    camera.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for _ in range(frames_per_connection):
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        time.sleep(1.0 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(Handler, "/stream.mjpg")


@pytest.fixture
def camera() -> Iterator[MjpegCamera]:
    cam = MjpegCamera()
    yield cam
    cam.close()


def test_stream_that_drops_is_reconnected_and_logged_once_per_outage(
        camera: MjpegCamera, caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    source = LiveSource(camera.url, SourceConfig(uri=camera.url, reconnect_initial_s=0.1), stop)
    frames = []
    deadline = time.monotonic() + 20
    while camera.connections < 3 and time.monotonic() < deadline:
        frame = source.read(timeout=0.5)
        if frame is not None:
            frames.append(frame)
    stop.set()
    source.close()
    assert camera.connections >= 3, "the source did not reconnect after the stream dropped"
    assert source.reconnects >= 2
    assert len(frames) >= 20 and frames[0].image.shape == (240, 320, 3)
    assert [f.index for f in frames] == sorted(f.index for f in frames)
    drops = caplog.text.count("stream dropped; reconnecting")
    assert drops == source.reconnects or drops == source.reconnects + 1  # one line per outage


def test_slow_consumer_gets_the_newest_frame_and_drops_are_counted(camera: MjpegCamera) -> None:
    stop = threading.Event()
    source = LiveSource(camera.url, SourceConfig(uri=camera.url), stop)
    first = None
    deadline = time.monotonic() + 10
    while first is None and time.monotonic() < deadline:
        first = source.read(timeout=0.5)
    time.sleep(0.3)  # a slow frame: the capture thread keeps overwriting its one slot
    newest = source.read(timeout=0.5)
    stop.set()
    source.close()
    assert first is not None and newest is not None
    assert newest.index - first.index > 1 and source.dropped >= 1


def _write_video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 20 % 256, np.uint8))
    writer.release()


def test_video_file_reads_every_frame_with_stream_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    _write_video(path, 12)
    source = open_source(str(path), SourceConfig(), threading.Event())
    assert isinstance(source, VideoFileSource)
    frames = []
    while (frame := source.read(timeout=0.1)) is not None:
        frames.append(frame)
    assert source.finished and len(frames) == 12
    assert [f.index for f in frames] == list(range(12)) and frames[10].ts == pytest.approx(1.0)


def test_missing_video_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="nope.avi"):
        open_source(str(tmp_path / "nope.avi"), SourceConfig(), threading.Event())


def test_a_dev_path_is_a_camera_that_may_appear_later(tmp_path: Path) -> None:
    """A USB camera that enumerates after boot (or is unplugged) is waited for, like an index or URL."""
    video = tmp_path / "v.avi"
    _write_video(video, 40)
    camera = Path("/dev/shm") / f"accessd-test-{uuid.uuid4().hex}.avi"  # /dev/... : taken for a camera
    stop = threading.Event()
    source = open_source(str(camera), SourceConfig(reconnect_initial_s=0.1, reconnect_max_s=0.2), stop)
    try:
        assert isinstance(source, LiveSource) and not source.finished
        assert source.read(timeout=0.5) is None and not source.connected  # not there yet: no error, no end
        os.symlink(video, camera)
        frame = source.read(timeout=10)
        assert frame is not None and frame.image.shape == (48, 64, 3)
    finally:
        stop.set()
        source.close()
        camera.unlink(missing_ok=True)


def test_stream_that_stalls_is_reopened(caplog: pytest.LogCaptureFixture) -> None:
    # 10 frames, then silence with the connection held open (a hung camera).
    camera = MjpegCamera(frames_per_connection=10, fps=30)
    original = camera.server.RequestHandlerClass.do_GET

    def stalling_get(handler: BaseHTTPRequestHandler) -> None:
        original(handler)  # type: ignore[arg-type]
        time.sleep(30)

    camera.server.RequestHandlerClass.do_GET = stalling_get  # type: ignore[attr-defined]
    stop = threading.Event()
    source = LiveSource(camera.url, SourceConfig(uri=camera.url, stall_timeout_s=2.0, reconnect_initial_s=0.1),
                        stop)
    try:
        t0 = time.monotonic()
        while camera.connections < 2 and time.monotonic() - t0 < 15:
            source.read(timeout=0.5)
        assert camera.connections >= 2, "a stalled stream was never reopened"
        assert time.monotonic() - t0 < 10
        assert "stream dropped; reconnecting" in caplog.text
    finally:
        stop.set()
        source.close()
        camera.close()


def test_stream_password_comes_from_a_credential_and_is_never_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    password = "p@ss:w/rd"  # characters that must be escaped inside a URL
    cam = MjpegCamera(frames_per_connection=100_000, basic_auth=f"door:{password}")
    (tmp_path / "camera-password").write_text(password + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    uri = cam.url.replace("http://", "http://door@") + "?channel=1"
    stop = threading.Event()
    src = open_source(uri, SourceConfig(password_credential="camera-password"), stop)
    try:
        assert src.read(timeout=10) is not None  # authenticated with the credential
        assert cam.refused <= 1 and cam.connections >= 1
    finally:
        src.close()
        cam.close()
    assert src.name == cam.url.replace("http://", "http://door@") + "?…"
    assert password not in caplog.text and password not in src.name


def test_display_name_hides_passwords_and_queries() -> None:
    assert display_name("rtsp://admin:hunter2@10.0.0.5:554/Streaming/101") == "rtsp://admin@10.0.0.5:554/Streaming/101"
    assert display_name("http://cam/snap.cgi?user=admin&pwd=hunter2") == "http://cam/snap.cgi?…"
    assert display_name("0") == "0" and display_name("door.mp4") == "door.mp4"
