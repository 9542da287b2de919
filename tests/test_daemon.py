"""The daemon end to end, as a real subprocess on real faces, judged by its audit log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from accessd.bench import bench_frame as paste
from accessd.imageio import read_image
from tests.conftest import LFW, REPO, SHARED

# People from pairsDevTest.txt: the shipped model never saw them in training.
PERSON = "Donald_Rumsfeld"
OTHER_ENROLLED = "Gerhard_Schroeder"
STRANGER = "Jennifer_Capriati"


def photos(person: str) -> list[Path]:
    return sorted((LFW / person).glob("*.jpg"))


def write_video(path: Path, segments: list[list[Path]], frames_per_photo: int, fps: float = 10.0) -> int:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened()
    n = 0
    for segment in segments:
        for photo in segment:
            frame = cv2.cvtColor(paste(read_image(photo)), cv2.COLOR_RGB2BGR)
            for _ in range(frames_per_photo):
                writer.write(frame)
                n += 1
    writer.release()
    return n


def enrol(gallery: Path, person: str, sources: list[Path]) -> None:
    (gallery / person).mkdir(parents=True, exist_ok=True)
    for p in sources:
        shutil.copy(p, gallery / person / p.name)


def write_config(path: Path, model: Path, **sections: dict[str, object]) -> Path:
    import yaml

    # Liveness: most tests hold LFW photos before the camera, which never blink, so the checks
    # are off unless a test names `liveness` (then the shipped defaults, less what it overrides).
    liveness = {"blink": False, "instrument": False, "motion": False} if "liveness" not in sections else {}
    data: dict[str, object] = {
        "model": {"path": str(model)},  # default providers: CUDA first, CPU fallback
        "detector": {"models_dir": str(REPO / "models/detector")},
        "state_dir": str(path.parent / "state"),
        "metrics": {"port": 0},  # tests run daemons side by side; test_metrics binds its own port
        **sections,
        "liveness": {"mesh_model": str(REPO / "models/face_mesh.onnx"), **liveness,
                     **dict(sections.get("liveness") or {})},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def run_daemon(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ACCESSD_SHARED": str(SHARED)}
    return subprocess.run([sys.executable, "-m", "accessd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def audit(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_enrolled_person_granted_and_stranger_denied(tmp_path: Path, trained_model: Path) -> None:
    person = photos(PERSON)
    gallery = tmp_path / "verification_images"
    enrol(gallery, PERSON, person[:10])
    enrol(gallery, OTHER_ENROLLED, photos(OTHER_ENROLLED)[:10])
    video = tmp_path / "door.avi"
    frames_per_photo = 5
    n = write_video(video, [person[20:30], photos(STRANGER)[:10]], frames_per_photo)
    boundary = 10 * frames_per_photo
    log = tmp_path / "audit.jsonl"
    snaps = tmp_path / "snaps"
    # The shipped model and the default thresholds, as a user gets them. Deny events at
    # most every second (default 10 s): the video holds 5 s per person.
    cfg = write_config(tmp_path / "config.yaml", trained_model, audit={"snapshots_dir": str(snaps)},
                       decision={"deny_interval_s": 1.0})
    result = run_daemon("run", "--config", str(cfg), "--source", str(video), "--gallery", str(gallery),
                        "--audit-log", str(log))
    assert result.returncode == 0, result.stderr[-3000:]
    records = audit(log)
    summary = [(r["decision"], r["person"], r["frame"], r["ratio"], r["score"], r.get("closest")) for r in records]
    granted = [r for r in records if r["decision"] == "grant"]
    denied = [r for r in records if r["decision"] == "deny"]
    assert granted, f"no grant: {summary}"
    assert all(r["person"] == PERSON and int(r["frame"]) < boundary for r in granted), summary
    assert any(int(r["frame"]) >= boundary for r in denied), summary
    assert all(r["source"] == str(video) for r in records)
    assert all(Path(str(r["snapshot"])).is_file() for r in records)
    assert f"stopped after {n} frames" in result.stderr
    assert "decision=grant person=" + PERSON in result.stderr
    # CUDA's absence is one warning of ours, not ONNX Runtime's red loader errors, and
    # MediaPipe's native notices go through our logging at DEBUG: stderr is ours alone.
    assert "[E:onnxruntime" not in result.stderr
    from tests.test_nativelog import only_own_lines

    assert only_own_lines(result.stderr) == [], only_own_lines(result.stderr)[:5]


def test_corrupt_and_faceless_photos_are_skipped_by_name(tmp_path: Path, trained_model: Path) -> None:
    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:3])
    (gallery / PERSON / "corrupt.jpg").write_bytes(photos(PERSON)[3].read_bytes()[:300])
    cv2.imwrite(str(gallery / PERSON / "wall.png"), np.full((200, 200, 3), 200, np.uint8))
    cv2.imwrite(str(gallery / "owner.jpg"), cv2.imread(str(photos(STRANGER)[1])))  # no person folder
    cfg = write_config(tmp_path / "config.yaml", trained_model)
    result = run_daemon("enroll", "--list", "--config", str(cfg), "--gallery", str(gallery))
    assert result.returncode == 0, result.stderr
    assert f"{PERSON}\t3" in result.stdout and "owner\t1" in result.stdout
    assert "corrupt.jpg" in result.stderr and "wall.png: no face found" in result.stderr


def start_without_camera(tmp_path: Path, model: Path) -> subprocess.Popen[str]:
    """`accessd run` as a real process, with a camera that never opens and an empty gallery."""
    cfg = write_config(tmp_path / "config.yaml", model,
                       source={"uri": "rtsp://127.0.0.1:9/none", "reconnect_max_s": 1.0},
                       gallery={"dir": str(tmp_path / "empty")}, audit={"path": str(tmp_path / "a.jsonl")})
    env = {**os.environ, "ACCESSD_SHARED": str(SHARED)}
    return subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_camera_that_never_opens_keeps_running_until_sigterm(tmp_path: Path, trained_model: Path) -> None:
    proc = start_without_camera(tmp_path, trained_model)
    try:
        time.sleep(12)
        assert proc.poll() is None, "daemon exited while the camera was down"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert err.count("cannot open; retrying") == 1, err  # logged once per outage, not per retry
    assert "[ WARN" not in err and "[ERROR" not in err, err  # no OpenCV stack per retry either
    assert "received SIGTERM" in err
    assert audit(tmp_path / "a.jsonl") == []  # no frame, no decision: nothing granted, nothing invented


@pytest.mark.parametrize("command", [["run", "--source", "missing.avi"], ["enroll", "--list"],
                                     ["verify", "a.jpg", "b.jpg"], ["capture", "--headless", "--person", "x"]])
def test_missing_model_is_a_clear_startup_error(tmp_path: Path, command: list[str]) -> None:
    cfg = write_config(tmp_path / "config.yaml", tmp_path / "nope.onnx",
                       detector={"models_dir": str(tmp_path / "no-detectors")})
    if command[0] != "capture":  # capture needs only the detector: its error is the one to see
        cfg = write_config(tmp_path / "config.yaml", tmp_path / "nope.onnx")
    result = run_daemon(command[0], "--config", str(cfg), *command[1:])
    assert result.returncode == 1, result.stderr[-2000:]
    assert "cannot start: " in result.stderr and "Traceback" not in result.stderr
    assert ("no-detectors" if command[0] == "capture" else "nope.onnx") in result.stderr


@pytest.mark.parametrize("flag", ["--max-frames"])
def test_max_frames_stops_a_video_early(tmp_path: Path, trained_model: Path, flag: str) -> None:
    video = tmp_path / "v.avi"
    write_video(video, [photos(PERSON)[:2]], 10)
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(tmp_path / "empty")})
    result = run_daemon("run", "--config", str(cfg), "--source", str(video), flag, "7",
                        "--audit-log", str(tmp_path / "a.jsonl"))
    assert result.returncode == 0 and "stopped after 7 frames" in result.stderr, result.stderr[-2000:]


def test_gallery_changes_are_picked_up_without_restart(tmp_path: Path, tiny_model: Path) -> None:
    from accessd.config import load_config
    from accessd.daemon import Daemon

    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:2])
    cfg = write_config(tmp_path / "config.yaml", tiny_model, gallery={"dir": str(gallery)},
                       audit={"path": str(tmp_path / "a.jsonl")})
    daemon = Daemon(load_config(cfg))

    def in_use_within(seconds: float, expected: dict[str, int]) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            daemon._maybe_reload_gallery()  # what the frame loop calls every frame ...
            daemon._apply_finished()  # ... and this swaps in what the worker thread built
            if daemon.gallery.counts() == expected:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise AssertionError(f"gallery is {daemon.gallery.counts()}, expected {expected}")

    try:
        assert daemon.gallery.counts() == {PERSON: 2}
        enrol(gallery, STRANGER, photos(STRANGER)[1:2])
        assert in_use_within(2.0, {PERSON: 2, STRANGER: 1}) < 2.0
        shutil.rmtree(gallery / PERSON)
        assert in_use_within(2.0, {STRANGER: 1}) < 2.0
    finally:
        daemon.worker.close()
        daemon.watcher.close()
        for door in daemon.doors:
            door.actions.close()
        daemon.audit.close()
        daemon.pipeline.close()


def test_polling_fallback_sees_changes_without_inotify(tmp_path: Path) -> None:
    from accessd.watch import GalleryWatcher

    watcher = GalleryWatcher(tmp_path, poll_s=0.3, use_inotify=False)  # as on NFS: only the poll
    try:
        assert not watcher.changed()
        (tmp_path / "new.jpg").write_bytes(b"x")
        t0 = time.monotonic()
        while not watcher.changed():
            assert time.monotonic() - t0 < 3, "poll never noticed the new file"
            time.sleep(0.05)
    finally:
        watcher.close()


def test_a_change_inotify_reported_is_not_flagged_again_by_the_poll(tmp_path: Path) -> None:
    """Each inotify-reported change was rebuilt twice: once for the event, once when the next
    poll saw the same difference."""
    from accessd.watch import GalleryWatcher

    watcher = GalleryWatcher(tmp_path, poll_s=1.0)
    try:
        (tmp_path / "new.jpg").write_bytes(b"x")
        t0 = time.monotonic()
        while not watcher.changed():  # inotify's report, settled after 0.3 s: before the first poll
            assert time.monotonic() - t0 < 0.9, "inotify never reported the new file before the first poll"
            time.sleep(0.05)
        time.sleep(2.2)  # two polls
        assert not watcher.changed()
    finally:
        watcher.close()


def test_the_poll_never_runs_on_the_frame_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat per photo every 5 s on the frame thread was a dropped frame (14 ms at 1,500 files)."""
    import threading

    import accessd.watch as watch

    callers: list[str] = []
    real = watch.signature
    monkeypatch.setattr(watch, "signature", lambda root: (callers.append(threading.current_thread().name),
                                                          real(root))[1])
    watcher = watch.GalleryWatcher(tmp_path, poll_s=0.1)
    try:
        callers.clear()  # the first signature, at construction, is taken wherever the watcher is made
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:
            watcher.changed()  # what the frame loop calls every frame
            time.sleep(0.01)
    finally:
        watcher.close()
    assert callers and threading.current_thread().name not in callers, callers


def _in_process_daemon(tmp_path: Path, model: Path, hook_out: Path, **sections: dict[str, object]) -> object:
    from accessd.config import load_config
    from accessd.daemon import Daemon

    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:10])
    hook = {"argv": [sys.executable, "-c", f"open({str(hook_out)!r}, 'a').write('fired\\n')"], "on": ["grant", "deny"]}
    cfg = write_config(tmp_path / "config.yaml", model, gallery={"dir": str(gallery)},
                       actions={"hooks": [hook]},
                       decision={"deny_interval_s": 0.5}, **sections)
    return Daemon(load_config(cfg))


def test_errors_on_frames_fail_closed_and_the_loop_goes_on(tmp_path: Path, trained_model: Path) -> None:
    import threading

    video = tmp_path / "v.avi"
    write_video(video, [photos(PERSON)[20:26]], 5)
    hooks = tmp_path / "hooks.txt"
    daemon = _in_process_daemon(tmp_path, trained_model, hooks, audit={"path": str(tmp_path / "a.jsonl")})
    real = daemon.pipeline.analyse_at  # type: ignore[attr-defined]
    failed: list[int] = []

    def flaky(door: str, image: np.ndarray, gallery: object) -> object:
        n = len(failed) + 1
        if n <= 20:  # the model blows up on the first 20 frames
            failed.append(n)
            raise RuntimeError("injected model failure")
        return real(door, image, gallery)

    daemon.pipeline.analyse_at = flaky  # type: ignore[attr-defined]
    daemon.source_uri = str(video)  # type: ignore[attr-defined]
    assert daemon.run(threading.Event()) == 0  # type: ignore[attr-defined]
    assert daemon.stats.frames == 30 and daemon.stats.errors == 20  # type: ignore[attr-defined]
    records = audit(tmp_path / "a.jsonl")
    # No decision came from a failed frame; the loop went on and decided on the good ones.
    assert records and all(int(r["frame"]) >= 20 for r in records), records
    assert any(r["decision"] == "grant" and r["person"] == PERSON for r in records), records


def test_audit_disk_full_withholds_actions_and_keeps_running(tmp_path: Path, trained_model: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    import threading

    video = tmp_path / "v.avi"
    write_video(video, [photos(PERSON)[20:26]], 5)
    hooks = tmp_path / "hooks.txt"
    daemon = _in_process_daemon(tmp_path, trained_model, hooks, audit={"path": "/dev/full"})
    daemon.source_uri = str(video)  # type: ignore[attr-defined]
    assert daemon.run(threading.Event()) == 0  # type: ignore[attr-defined]
    assert daemon.stats.frames == 30  # type: ignore[attr-defined]
    assert daemon.stats.errors >= 1 and sum(daemon.stats.decisions.values()) == 0  # type: ignore[attr-defined]
    assert "not recorded, actions withheld" in caplog.text and "No space left" in caplog.text
    assert not hooks.exists()  # no hook ran for an unrecorded decision
    errors = daemon.metrics.registry.get_sample_value("accessd_audit_errors_total")  # type: ignore[attr-defined]
    assert errors is not None and errors >= 1  # surfaced to the scraper, not only the log


def test_frames_keep_flowing_while_a_large_enrolment_is_embedded(tmp_path: Path, tiny_model: Path) -> None:
    import threading

    from accessd.config import load_config
    from accessd.daemon import Daemon
    from tests.test_source import MjpegCamera

    camera = MjpegCamera(frames_per_connection=100_000, fps=20)
    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:2])
    cfg = write_config(tmp_path / "config.yaml", tiny_model, source={"uri": camera.url},
                       gallery={"dir": str(gallery)}, audit={"path": str(tmp_path / "a.jsonl")})
    daemon = Daemon(load_config(cfg))
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while daemon.stats.frames < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        new = photos(PERSON)[2:62]
        enrol(gallery, PERSON, new)  # 60 photos: seconds of detection and embedding on a CPU
        while not daemon.worker.busy.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        frames_before = daemon.stats.frames
        t0 = time.monotonic()
        while len(daemon.gallery) == 2 and time.monotonic() < deadline + 30:
            time.sleep(0.005)
        frames_during, build_s = daemon.stats.frames - frames_before, time.monotonic() - t0
    finally:
        stop.set()
        runner.join(timeout=10)
        camera.close()
    assert len(daemon.gallery) >= 2 + len(new) - 3, daemon.gallery.counts()  # a photo or two may lack a face
    # Built on the frame thread, the loop would have stood still for the whole build.
    assert frames_during >= 5, (frames_during, build_s)
    print(f"{frames_during} frames in the {build_s:.1f}s the enrolment took")
    assert not runner.is_alive()


def test_sigterm_while_loading_a_cold_gallery_stops_at_once(tmp_path: Path, tiny_model: Path) -> None:
    gallery = tmp_path / "g"
    for person in sorted(p.name for p in LFW.iterdir())[:400]:
        enrol(gallery, person, photos(person)[:1])
    cfg = write_config(tmp_path / "config.yaml", tiny_model, gallery={"dir": str(gallery)},
                       audit={"path": str(tmp_path / "a.jsonl")})
    env = {**os.environ, "ACCESSD_SHARED": str(SHARED)}
    proc = subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg), "--source", "0"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "gallery: loading 400 photos" in line:
                break
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped while loading the gallery" in err and "newly embedded" not in err
    assert stopped_in < 5, stopped_in


class Scripted:
    """A live source played from a script of (image, ts, before) frames, then finished.

    `before`, when given, runs as the frame is read: the moment something happens at the door.
    """

    name = "scripted"

    def __init__(self, frames: list[tuple[np.ndarray, float, object]]) -> None:
        self.frames = frames
        self.finished = False
        self.index = 0

    def read(self, timeout: float) -> object:
        from accessd.types import Frame

        if self.index >= len(self.frames):
            self.finished = True
            return None
        image, ts, before = self.frames[self.index]
        if callable(before):
            before()
        self.index += 1
        return Frame(image, self.index - 1, ts)

    def close(self) -> None:
        pass


def _door_in_process(tmp_path: Path, model: Path, liveness: dict[str, object] | None = None,
                     **decision: object) -> object:
    from accessd.config import load_config
    from accessd.daemon import Daemon

    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:3])
    cfg = write_config(tmp_path / "config.yaml", model, gallery={"dir": str(gallery)},
                       audit={"path": str(tmp_path / "a.jsonl")}, decision=decision,
                       **({"liveness": liveness} if liveness is not None else {}))
    return Daemon(load_config(cfg))


def test_the_first_frame_after_a_camera_stall_grants_no_one(tmp_path: Path, trained_model: Path) -> None:
    """The review's reproduction: 30 frames of an enrolled person, a 60 s stall, one empty grey
    frame. The grey frame granted the person a second time, with the old score."""
    import threading

    daemon = _door_in_process(tmp_path, trained_model)
    face = paste(read_image(photos(PERSON)[20]))
    grey = np.full_like(face, 128)
    script = [(face, i / 15, None) for i in range(30)] + [(grey, 62.0, None)]
    assert daemon.run(threading.Event(), source=Scripted(script)) == 0  # type: ignore[attr-defined]
    grants = [(r["frame"], r["person"]) for r in audit(tmp_path / "a.jsonl") if r["decision"] == "grant"]
    assert len(grants) == 1 and grants[0][1] == PERSON and grants[0][0] < 30, grants


def test_a_revoked_person_is_refused_from_the_next_frame(tmp_path: Path, trained_model: Path) -> None:
    """What the console's delete does: the photos go, and the frame after the call is judged without them."""
    import threading

    daemon = _door_in_process(tmp_path, trained_model, grant_cooldown_s=0.3)
    face = paste(read_image(photos(PERSON)[20]))
    revoked_at = 40
    done: list[bool] = []

    def revoke() -> None:
        enrolled = sorted((tmp_path / "g" / PERSON).iterdir())
        for p in enrolled:
            p.unlink()
        worker = threading.Thread(target=lambda: done.append(daemon.revoke(enrolled)))  # type: ignore[attr-defined]
        worker.start()
        time.sleep(0.3)  # the console's request is queued while this frame is read

    script = [(face, i / 15, revoke if i == revoked_at else None) for i in range(80)]
    assert daemon.run(threading.Event(), source=Scripted(script)) == 0  # type: ignore[attr-defined]
    grants = [r["frame"] for r in audit(tmp_path / "a.jsonl") if r["decision"] == "grant"]
    assert len(grants) >= 2 and max(grants) <= revoked_at, grants  # granted until then, never after
    assert done == [True]  # the call returned once the frame loop had applied it


def test_a_suspected_spoof_is_audited_counted_and_keeps_its_snapshot_face(tmp_path: Path,
                                                                         trained_model: Path) -> None:
    import threading

    daemon = _door_in_process(tmp_path, trained_model, liveness={"max_wait_s": 1.0, "instrument": False},
                              deny_interval_s=30.0)
    face = paste(read_image(photos(PERSON)[20]))  # a photo: it never blinks
    script = [(face, i / 15, None) for i in range(30)]
    assert daemon.run(threading.Event(), source=Scripted(script)) == 0  # type: ignore[attr-defined]
    records = audit(tmp_path / "a.jsonl")
    assert [(r["decision"], r["check"], r["closest"]) for r in records] == [("spoof_suspected", "blink", PERSON)]
    registry = daemon.metrics.registry  # type: ignore[attr-defined]
    assert registry.get_sample_value("accessd_spoof_suspected_total", {"door": "door", "check": "blink"}) == 1.0
