"""Frame sources: cameras and streams (live) and video files (finite).

Live sources are read by a capture thread that never waits for the pipeline:
it overwrites a one-slot buffer and counts the frames nobody took, so a slow
frame never makes the daemon fall behind real time. A camera that fails to
open or drops is retried with exponential backoff, logged once per outage.

Video files are read in order without dropping frames: they are not real
time, and a test or an audit replay must see every frame.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

import cv2

from accessd.config import SourceConfig, read_credential
from accessd.imageio import to_rgb
from accessd.types import Frame

log = logging.getLogger(__name__)


class FrameSource(Protocol):
    name: str
    finished: bool

    def read(self, timeout: float) -> Frame | None: ...

    def close(self) -> None: ...


def _open_capture(uri: str, config: SourceConfig) -> Any:
    target: int | str = int(uri) if uri.isdigit() else uri
    if isinstance(target, str) and "://" in target:
        # Without these a stalled network stream blocks read() for as long as FFmpeg likes.
        timeout_ms = int(config.stall_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    elif isinstance(target, str) and target.startswith("/dev/"):
        device = Path(target)
        if not device.exists():
            return cv2.VideoCapture()  # not plugged in (yet): closed, and no FFmpeg complaint on stderr
        # A camera node goes to V4L2 directly (FFmpeg's probe of it prints to stderr when it fails).
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2 if device.is_char_device() else cv2.CAP_ANY)
    else:
        cap = cv2.VideoCapture(target)
    if cap.isOpened() and (isinstance(target, int) or target.startswith("/dev/")):
        if config.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        if config.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
    return cap


def display_name(uri: str) -> str:
    """`uri` as logs, the audit log and hooks may show it: no password, no query string
    (some cameras take `?user=..&pwd=..`)."""
    if "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def stream_url(uri: str, config: SourceConfig) -> str:
    """The URL to open: `uri` with the password from `source.password_credential` put in."""
    if not config.password_credential:
        return uri
    password = urllib.parse.quote(read_credential(config.password_credential), safe="")
    scheme, rest = uri.split("://", 1)
    userinfo, _, hostpath = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{password}@{hostpath}"


def is_file_source(uri: str) -> bool:
    """A video file, read in order to its end; anything else is a camera or stream, which waits and
    reconnects. `/dev/video2` and `/dev/v4l/by-id/...` are cameras: a USB camera may enumerate
    after the daemon starts, or be unplugged and come back."""
    return not uri.isdigit() and "://" not in uri and not uri.startswith("/dev/")


class VideoFileSource:
    def __init__(self, path: Path, config: SourceConfig, loop: bool = False) -> None:
        self.name = str(path)
        self.finished = False
        self._path, self._config, self._loop = path, config, loop
        self._cap = _open_capture(str(path), config)
        if not self._cap.isOpened():
            raise OSError(f"source {path}: cannot open video file")
        self._fps = self._cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._index = 0

    def read(self, timeout: float) -> Frame | None:
        ok, image = self._cap.read()
        if (not ok or image is None) and self._loop and self._index:
            # Soak runs replay the file forever; timestamps keep increasing.
            self._cap.release()
            self._cap = _open_capture(str(self._path), self._config)
            ok, image = self._cap.read()
        if not ok or image is None:
            self.finished = True
            return None
        frame = Frame(to_rgb(image, self.name), self._index, self._index / self._fps)
        self._index += 1
        return frame

    def close(self) -> None:
        self._cap.release()


class NewestFrameSource:
    """A source filled by a capture thread of its own, through a one-slot buffer: a new frame replaces
    one nobody took (counted in `dropped`), so a slow reader always gets the newest and never falls
    behind. Subclasses' threads call `_put`."""

    def __init__(self) -> None:
        self.dropped = 0
        self._cond = threading.Condition()
        self._slot: Frame | None = None

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self._cond.notify()

    def read(self, timeout: float) -> Frame | None:
        with self._cond:
            if self._slot is None:
                self._cond.wait(timeout)
            frame, self._slot = self._slot, None
            return frame


class LiveSource(NewestFrameSource):
    """A camera (index or /dev path) or stream URL read on its own thread."""

    def __init__(self, uri: str, config: SourceConfig, stop: threading.Event) -> None:
        super().__init__()
        self.name = display_name(uri)
        self._url = stream_url(uri, config)  # never logged: it may hold the password
        self.finished = False  # a live source never finishes; it reconnects
        self.config = config
        self.connected = False
        self.reconnects = 0
        self._stop = stop
        self._closed = threading.Event()
        self._index = 0
        # OpenCV logs a multi-line warning stack on every failed open; a camera that
        # is down would flood the journal. Our own line per outage says it once.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self.config.reconnect_initial_s
        outage_logged = False
        while not self._should_stop():
            cap = _open_capture(self._url, self.config)
            if not cap.isOpened():
                cap.release()
                if not outage_logged:
                    log.error("source %s: cannot open; retrying with backoff up to %.0fs",
                              self.name, self.config.reconnect_max_s)
                    outage_logged = True
                self._wait(delay)
                delay = min(delay * 2, self.config.reconnect_max_s)
                continue
            if outage_logged:
                log.info("source %s: connected after outage", self.name)
                self.reconnects += 1
            outage_logged = False
            delay = self.config.reconnect_initial_s
            self.connected = True
            while not self._should_stop():
                ok, image = cap.read()
                if not ok or image is None:
                    log.error("source %s: stream dropped; reconnecting", self.name)
                    outage_logged = True
                    break
                frame = Frame(to_rgb(image, self.name), self._index, time.monotonic())
                self._index += 1
                self._put(frame)
            self.connected = False
            cap.release()

    def _should_stop(self) -> bool:
        return self._stop.is_set() or self._closed.is_set()

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._should_stop() and time.monotonic() < end:
            self._closed.wait(min(0.1, end - time.monotonic()))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5.0)


def open_source(uri: str, config: SourceConfig, stop: threading.Event) -> FrameSource:
    if is_file_source(uri):
        return VideoFileSource(Path(uri), config)
    return LiveSource(uri, config, stop)
