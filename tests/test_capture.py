"""`accessd capture`: headless enrolment, and the key-driven window on a real X server (Xvfb)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, run_py
from tests.test_daemon import PERSON, photos, write_config, write_video


def test_headless_capture_enrols_from_the_webcam_recording(tmp_path: Path, trained_model: Path) -> None:
    gallery = tmp_path / "verification_images"
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)})
    run_py("-m", "accessd", "capture", "--headless", "--config", str(cfg), "--person", "speaker",
           "--source", str(SHARED / "data/video/webcam_face.mp4"), "--every", "40", "--count", "5")
    saved = sorted((gallery / "speaker").glob("*.jpg"))
    assert len(saved) == 5
    listing = run_py("-m", "accessd", "enroll", "--list", "--config", str(cfg))
    assert "speaker\t5" in listing.stdout  # every captured photo is usable for enrolment
    bad = run_py("-m", "accessd", "capture", "--headless", "--config", str(cfg), "--person", "../etc",
                 "--source", str(SHARED / "data/video/webcam_face.mp4"), check=False)
    assert bad.returncode == 2 and "--person must be a plain folder name" in bad.stderr


def test_window_without_a_display_says_use_headless(tmp_path: Path, trained_model: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", trained_model)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = run_py("-m", "accessd", "capture", "--config", str(cfg), "--person", "alice",
                    "--source", str(SHARED / "data/video/webcam_face.mp4"), check=False, env=env)
    assert result.returncode == 2 and "use --headless" in result.stderr


@pytest.fixture
def display() -> Iterator[str]:
    if not (shutil.which("Xvfb") and shutil.which("xdotool")):
        pytest.skip("Xvfb and xdotool are not installed (install.sh installs them as root on Debian)")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()  # Xvfb writes its display number once it accepts clients
    try:
        assert number, "Xvfb did not start"
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


def wait_for(what: str, check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_window_keys_save_anchor_positive_and_auto_capture(tmp_path: Path, trained_model: Path,
                                                            display: str) -> None:
    video = tmp_path / "door.avi"
    write_video(video, [photos(PERSON)[:30]], 10)  # 300 frames, each with one face
    gallery, data = tmp_path / "verification_images", tmp_path / "data"
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)})
    env = {**os.environ, "DISPLAY": display}
    proc = subprocess.Popen([sys.executable, "-m", "accessd", "capture", "--config", str(cfg), "--person", "alice",
                             "--source", str(video), "--data-dir", str(data), "--every", "5"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)

    def xdotool(*args: str) -> str:
        return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, check=False).stdout

    def count(folder: Path) -> int:
        return len(list(folder.glob("*.jpg")))

    # stderr is read as it comes, so the test can wait for each key to take effect before the next: OpenCV's
    # window keeps only the last key of a burst, and on a loaded machine `c` then `q` can arrive as one.
    lines: list[str] = []
    stderr = proc.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
    reader.start()

    def logged(text: str) -> bool:
        return any(text in line for line in list(lines))

    try:
        def window_or_exit() -> bool:
            if proc.poll() is not None:  # it died before showing a window: say how, not "timed out"
                raise AssertionError(f"capture exited {proc.returncode}: {''.join(lines)[-2000:]}")
            return bool(xdotool("search", "--name", "accessd capture").strip())

        # 120 s: once, on a fresh CI clone, the first window took over 60 s to appear (it takes 2 s here).
        try:
            wait_for("the capture window", window_or_exit, 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; capture said: {''.join(lines)[-2000:]}") from None
        window = xdotool("search", "--name", "accessd capture").split()[0]
        xdotool("windowfocus", "--sync", window)

        def press_until_saved(key: str, folder: Path) -> None:
            # A press on a frame whose crop would not enrol saves nothing (and says so); press again.
            for _ in range(10):
                xdotool("key", key)
                try:
                    wait_for(f"a crop in {folder.name}", lambda: count(folder) == 1, timeout=1.5)
                    return
                except AssertionError:
                    continue
            raise AssertionError(f"key {key} saved nothing in 10 presses")

        press_until_saved("a", data / "anchor")
        press_until_saved("p", data / "positive")
        xdotool("key", "c")  # automatic capture into the gallery, every 5th face
        wait_for("automatic capture on", lambda: logged("automatic capture into") and logged(" on\n"))
        wait_for("automatic gallery photos", lambda: count(gallery / "alice") >= 3)
        xdotool("key", "c")
        wait_for("automatic capture off", lambda: logged(" off\n"))
        xdotool("key", "q")
        proc.wait(timeout=20)
        reader.join(timeout=10)
    finally:
        proc.kill()
    err = "".join(lines)
    assert proc.returncode == 0, err[-2000:]
    assert (count(data / "anchor"), count(data / "positive")) == (1, 1)  # one press, one crop
    listing = run_py("-m", "accessd", "enroll", "--list", "--config", str(cfg))
    assert f"alice\t{count(gallery / 'alice')}" in listing.stdout  # every auto-captured photo enrols
    assert "automatic capture into" in err and " on" in err and " off" in err
