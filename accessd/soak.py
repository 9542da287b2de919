"""Soak run: the daemon on a looping video for a fixed time; reports memory growth.

    python -m accessd.soak [--seconds 600] [--video ../shared/data/video/webcam_face.mp4]

A benchmark, not a test: it prints one JSON object with frames processed,
frames/s, RSS at start (after warm-up) and end, and frame errors. The target
is RSS growth under 20 MB over ten minutes and no errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from accessd.config import parse_config
from accessd.daemon import Daemon
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
    args = p.parse_args(argv)
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
        config = parse_config({"gallery": {"dir": str(gallery.parent)}, "state_dir": tmp,
                               "audit": {"path": str(Path(tmp) / "audit.jsonl")}}, repo)
        daemon = Daemon(config, str(args.video))
        source = VideoFileSource(args.video, config.source, loop=True)
        stop = threading.Event()
        start_rss = [0.0]

        def sample_start() -> None:
            start_rss[0] = rss_mb()

        threading.Timer(10.0, sample_start).start()  # after warm-up: allocator and caches settled
        threading.Timer(args.seconds, stop.set).start()
        t0 = time.monotonic()
        daemon.run(stop, source=source)
        elapsed = time.monotonic() - t0
        end = rss_mb()
        report = {
            "seconds": round(elapsed, 1),
            "frames": daemon.stats.frames,
            "fps": round(daemon.stats.frames / elapsed, 1),
            "rss_mb_start": round(start_rss[0], 1),
            "rss_mb_end": round(end, 1),
            "rss_growth_mb": round(end - start_rss[0], 1),
            "frame_errors": daemon.stats.errors,
            "decisions": daemon.stats.decisions,
        }
        shutil.rmtree(gallery.parent, ignore_errors=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
