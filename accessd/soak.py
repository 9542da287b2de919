"""Soak run: the daemon on a looping video for a fixed time; reports memory growth.

    python -m accessd.soak [--seconds 600] [--video ../shared/data/video/webcam_face.mp4] [--enrol N]

A benchmark, not a test: it prints one JSON object with frames processed,
frames/s, RSS at start (after warm-up) and end, and frame errors. The target
is RSS growth under 20 MB over ten minutes and no errors.

`--enrol N` drops N LFW photos into the gallery after the warm-up, as someone
enrolling a crowd would, and adds how long they took to be in use and the
longest pause between two processed frames before and during that build (the
build runs on the worker thread; on the frame thread the pause would be the
whole build).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from accessd.config import parse_config
from accessd.daemon import Daemon, limit_malloc_arenas
from accessd.source import VideoFileSource


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--video", type=Path, default=shared / "data/video/webcam_face.mp4")
    p.add_argument("--enrol", type=int, default=0, help="photos to enrol while running, after the warm-up")
    p.add_argument("--console", action="store_true",
                   help="serve the console too, with a viewer polling it as the page does (live frame every "
                        "0.3 s, status every 2 s), to measure what it costs the frame loop")
    p.add_argument("--doors", type=int, default=1, help="doors in the daemon, each looping the video")
    p.add_argument("--threads", type=int, default=0,
                   help="model.threads (ONNX Runtime intra-op threads; 0: its choice)")
    args = p.parse_args(argv)
    limit_malloc_arenas()  # as `accessd run` does
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery" / "speaker"
        gallery.mkdir(parents=True)
        # Enrol the speaker from stills of her own video (every 60th frame).
        import cv2

        cap = cv2.VideoCapture(str(args.video))
        for i in range(0, 360, 60):
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, frame = cap.read()
            if ok:
                cv2.imwrite(str(gallery / f"frame{i}.jpg"), frame)
        cap.release()
        repo = Path(__file__).resolve().parent.parent
        web: dict[str, object] = {"port": 0}
        if args.console:
            (Path(tmp) / "console-password").write_text("soak-password")
            (Path(tmp) / "console-token").write_text(_SOAK_TOKEN)
            os.environ["CREDENTIALS_DIRECTORY"] = tmp
            web = {"port": _free_port(), "password_credential": "console-password",
                   "api_token_credential": "console-token"}
        doors = {"doors": [{"name": f"door{i + 1}", "source": {"uri": str(args.video)}} for i in range(args.doors)]}
        config = parse_config({"gallery": {"dir": str(gallery.parent)}, "state_dir": tmp, "web": web,
                               "model": {"threads": args.threads},
                               "audit": {"path": str(Path(tmp) / "audit.jsonl")},
                               **(doors if args.doors > 1 else {})}, repo)
        daemon = Daemon(config, str(args.video) if args.doors == 1 else None)
        sources = {d.name: VideoFileSource(args.video, d.source, loop=True) for d in config.door_list()}
        stop = threading.Event()
        start_rss = [0.0]

        def sample_start() -> None:
            start_rss[0] = rss_mb()

        threading.Timer(10.0, sample_start).start()  # after warm-up: allocator and caches settled
        # RSS every minute: a one-off step (a cache filling) and a steady leak look alike at the end.
        samples: list[float] = []
        end_rss = [float("nan")]

        def sample_every_minute() -> None:
            while not stop.wait(60.0):
                samples.append(round(rss_mb(), 1))
            end_rss[0] = rss_mb()  # at the stop, before the daemon tears its parts down

        threading.Thread(target=sample_every_minute, daemon=True).start()
        threading.Timer(args.seconds, stop.set).start()
        frame_times: list[float] = []
        enrolment: dict[str, float] = {}
        if args.enrol:  # frame times only then: 100,000 floats would be a "leak" of our own
            process = daemon._process

            def timed_process(*a: Any) -> None:
                process(*a)
                frame_times.append(time.monotonic())

            daemon._process = timed_process  # type: ignore[method-assign,assignment]
            threading.Timer(10.0, _enrol, (daemon, shared / "data/lfw", gallery.parent, args.enrol,
                                           enrolment)).start()
        viewed = [0]
        if args.console:
            threading.Thread(target=_viewer, args=(f"http://127.0.0.1:{web['port']}", args.seconds - 1, viewed),
                             daemon=True).start()
        t0 = time.monotonic()
        daemon.run(stop, sources=sources)
        elapsed = time.monotonic() - t0
        time.sleep(0.1)  # the sampler takes its last reading as the stop is set
        end = end_rss[0]
        report = {
            "seconds": round(elapsed, 1),
            "frames": daemon.stats.frames,
            "fps": round(daemon.stats.frames / elapsed, 1),
            "rss_mb_start": round(start_rss[0], 1),
            "rss_mb_end": round(end, 1),
            "rss_growth_mb": round(end - start_rss[0], 1),
            "rss_mb_each_minute": samples,
            "doors": args.doors,
            "frame_errors": daemon.stats.errors,
            "decisions": daemon.stats.decisions,
        }
        if enrolment:
            report.update(_enrol_report(enrolment, frame_times))
        if args.console:
            report["console_requests"] = viewed[0]
        shutil.rmtree(gallery.parent, ignore_errors=True)
    print(json.dumps(report))
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SOAK_TOKEN = "soak-token-" + "0" * 32  # a throwaway console, on loopback, for the soak's own viewer
_VIEWER = """
import sys, time, urllib.error, urllib.request
url, count = sys.argv[1], 0
auth = {"Authorization": "Bearer " + sys.argv[3]}
last_status = 0.0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    time.sleep(0.3)
    paths = ["/api/live.jpg"]
    if time.monotonic() - last_status > 2.0:
        paths.append("/api/status")
        last_status = time.monotonic()
    for path in paths:
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, headers=auth), timeout=5) as r:
                r.read()
            count += 1
        except (urllib.error.URLError, OSError):
            pass
print(count)
"""


def _viewer(url: str, seconds: float, count: list[int]) -> None:
    """What an open console page asks for (the live frame every 0.3 s, the status every 2 s), from
    another process, as a browser would be: its own CPU time is not the daemon's."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _VIEWER, url, str(seconds), _SOAK_TOKEN], capture_output=True,
                          text=True, check=False, timeout=seconds + 60)
    count[0] = int(done.stdout.strip() or 0)


def _enrol(daemon: Daemon, lfw: Path, gallery: Path, count: int, out: dict[str, float]) -> None:
    before = len(daemon.gallery)
    out["start"] = time.monotonic()
    for photo in sorted(lfw.glob("*/*.jpg"))[:count]:
        (gallery / photo.parent.name).mkdir(exist_ok=True)
        shutil.copy(photo, gallery / photo.parent.name / photo.name)
    out["copied"] = time.monotonic()
    while len(daemon.gallery) <= before and time.monotonic() - out["start"] < 600:
        time.sleep(0.01)
    out["in_use"] = time.monotonic()
    out["photos"] = len(daemon.gallery) - before


def _max_gap_ms(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    return round(1000 * max((b - a for a, b in itertools.pairwise(inside)), default=0.0), 1)


def _enrol_report(e: dict[str, float], frame_times: list[float]) -> dict[str, object]:
    return {
        "enrolled_photos": int(e["photos"]),
        "enrol_in_use_s": round(e["in_use"] - e["start"], 2),
        "max_frame_gap_ms_before": _max_gap_ms(frame_times, e["start"] - 5.0, e["start"]),
        "max_frame_gap_ms_during": _max_gap_ms(frame_times, e["start"], e["in_use"]),
        "frames_during": sum(e["start"] <= t <= e["in_use"] for t in frame_times),
    }


if __name__ == "__main__":
    raise SystemExit(main())
