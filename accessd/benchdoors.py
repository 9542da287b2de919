"""`accessd bench --doors N`: N cameras at 15 frames/s each, served by one daemon.

Each door's camera is a thread that makes a frame every 1/fps seconds (a real
LFW face, enrolled, pasted into 640x480: the costliest case, every tower and the
liveness signals) and keeps only the newest, as a real camera's capture thread
does; a frame nobody took before the next one came is counted as dropped. The
doors run in the real daemon (accessd/daemon.py): each on its own thread, the
faces of the doors that have some at the same moment in one model run, against
a gallery of `--sizes` photos. A door's latency is
from the frame's capture to the end of its decision.

`--separate` runs the same N streams as N processes of one door each, started
together, for the comparison with one process batching them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from accessd.bench import bench_frame, build_gallery, shared_dir
from accessd.config import Config, DoorConfig
from accessd.gallery import Gallery, Photo
from accessd.imageio import read_image
from accessd.pipeline import Pipeline
from accessd.source import NewestFrameSource
from accessd.types import Frame, Image

WARMUP_S = 3.0


class PacedCamera(NewestFrameSource):
    """A camera that produces `fps` frames a second whether or not anyone reads them."""

    def __init__(self, name: str, image: Image, fps: float, stop: threading.Event) -> None:
        super().__init__()
        self.name, self.finished, self.connected = name, False, True
        self.produced = 0
        self._image, self._period, self._stop = image, 1.0 / fps, stop
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._put(Frame(self._image, self.produced, time.monotonic()))
            self.produced += 1
            next_at += self._period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self._thread.join(timeout=2.0)


def _door_config(config: Config, doors: int, folder: Path) -> Config:
    """`config` with `doors` doors, nothing served and nothing fired, the audit log in `folder`."""
    door = DoorConfig(decision=config.decision)
    return dataclasses.replace(
        config,
        doors=tuple(dataclasses.replace(door, name=f"door{i + 1}") for i in range(doors)),
        gallery=dataclasses.replace(config.gallery, dir=folder / "gallery"),
        audit=dataclasses.replace(config.audit, path=folder / "audit.jsonl", snapshots_dir=None),
        metrics=dataclasses.replace(config.metrics, port=0), web=dataclasses.replace(config.web, port=0),
        mqtt=dataclasses.replace(config.mqtt, host=""), state_dir=folder / "state",
    )


def _cached_gallery(pipeline: Pipeline, size: int, photos: list[Path]) -> Gallery:
    """`build_gallery`, kept in the temp folder by model and size: a --separate run's processes (and the
    next run) load it instead of each embedding 1,000 photos again on the same cores."""
    path = Path(tempfile.gettempdir()) / f"accessd-bench-gallery-{pipeline.model.sha256[:12]}-{size}.npz"
    try:
        with np.load(path) as saved:
            names = [str(n) for n in saved["names"]]
            return Gallery(embeddings=saved["embeddings"], person_of=saved["person_of"],
                           people=tuple(str(p) for p in saved["people"]),
                           photos=tuple(Photo(n, Path(n), str(i)) for i, n in enumerate(names)))
    except (OSError, KeyError, ValueError):
        pass
    gallery = build_gallery(pipeline, size, photos)
    tmp = path.with_suffix(f".{os.getpid()}.npz")
    np.savez(tmp, embeddings=gallery.embeddings, person_of=gallery.person_of, people=np.asarray(gallery.people),
             names=np.asarray([p.person for p in gallery.photos]))
    os.replace(tmp, path)
    return gallery


def measure(config: Config, doors: int, size: int, fps: float, seconds: float,
            sync: Path | None = None, faces: int | None = None) -> dict[str, Any]:
    """One daemon, `doors` paced cameras, `seconds` measured after a warm-up; the first `faces` doors
    (all by default) show an enrolled face, the others an empty corridor (detection only)."""
    from accessd.daemon import Daemon
    from accessd.door import Door
    from accessd.pipeline import FrameAnalysis

    lfw = shared_dir() / "data/lfw"
    bush = sorted(lfw.glob("George_W_Bush/*.jpg"))
    photos = bush[1:4] + sorted(lfw.glob("*/*.jpg"))[: size + 50]
    with tempfile.TemporaryDirectory(prefix="accessd-bench-") as tmp:
        folder = Path(tmp)
        (folder / "gallery").mkdir()
        daemon = Daemon(_door_config(config, doors, folder))
        daemon.gallery = _cached_gallery(daemon.pipeline, size, photos)
        daemon._gallery_metrics()
        if sync is not None:  # --separate: every process streams from the same moment
            (sync / f"ready-{os.getpid()}").touch()
            while not (sync / "go").exists():
                time.sleep(0.05)
        stop = threading.Event()
        frame = bench_frame(read_image(bush[0]))
        empty = np.full_like(frame, 90)
        shown = [frame if faces is None or i < faces else empty for i in range(doors)]
        cameras = {d.name: PacedCamera(d.name, image, fps, stop) for d, image in zip(daemon.doors, shown, strict=True)}
        latencies: dict[str, list[float]] = {name: [] for name in cameras}
        measuring = threading.Event()
        process = daemon._process

        def timed(door: Door, f: Frame, analysis: FrameAnalysis | None) -> None:
            process(door, f, analysis)
            if measuring.is_set():
                latencies[door.name].append((time.monotonic() - f.ts) * 1000.0)

        daemon._process = timed  # type: ignore[method-assign,assignment]
        runner = threading.Thread(target=daemon.run, args=(stop,), kwargs={"sources": cameras})
        runner.start()
        time.sleep(WARMUP_S)
        start = {name: (c.produced, c.dropped) for name, c in cameras.items()}
        measuring.set()
        time.sleep(seconds)
        measuring.clear()
        end = {name: (c.produced, c.dropped) for name, c in cameras.items()}
        stop.set()
        runner.join(timeout=30)
        per_door = []
        for name, lat in latencies.items():
            produced, dropped = end[name][0] - start[name][0], end[name][1] - start[name][1]
            q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [float("nan")] * 19
            per_door.append({"door": name, "frames_in": produced, "decided": len(lat),
                             "dropped_pct": round(100.0 * dropped / max(produced, 1), 1),
                             "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
                             "latency_ms_p95": round(q[18], 1)})
        return {"doors": doors, "faces": doors if faces is None else min(faces, doors), "fps_per_door": fps,
                "gallery_size": size, "seconds": seconds,
                "model": daemon.pipeline.model.path.name, "provider": daemon.pipeline.model.provider,
                "per_door": per_door}


def separate(args: list[str], doors: int, faces: int | None) -> list[dict[str, Any]]:
    """`doors` one-door processes with the same settings, streaming from the same moment."""
    with tempfile.TemporaryDirectory(prefix="accessd-bench-sync-") as sync:
        procs = [subprocess.Popen([sys.executable, "-m", "accessd", *args, "--doors", "1", "--json",
                                   "--sync-dir", sync, "--faces", str(int(faces is None or i < faces))],
                                  stdout=subprocess.PIPE, text=True)
                 for i in range(doors)]
        deadline = time.monotonic() + 600
        while len(list(Path(sync).glob("ready-*"))) < doors:
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError("a one-door bench process did not get ready")
            time.sleep(0.1)
        (Path(sync) / "go").touch()
        return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """All doors of a run together: the worst p95, the mean drop rate, frames decided per second."""
    doors = report["per_door"]
    return {"doors": len(doors), "worst_p95_ms": max(d["latency_ms_p95"] for d in doors),
            "worst_p50_ms": max(d["latency_ms_p50"] or 0 for d in doors),
            "dropped_pct": round(statistics.mean(d["dropped_pct"] for d in doors), 1),
            "decided_per_s": round(sum(d["decided"] for d in doors) / report["seconds"], 1)}


def run_doors_bench(config: Config, doors: list[int], size: int, fps: float, seconds: float, as_json: bool,
                    compare_separate: bool, config_path: Path, sync: Path | None = None,
                    faces: int | None = None) -> int:
    if sync is not None:  # one process of a --separate run
        print(json.dumps(measure(config, doors[0], size, fps, seconds, sync, faces)))
        return 0
    rows = []
    for n in doors:
        report = measure(config, n, size, fps, seconds, faces=faces)
        rows.append({"design": "one process", **summary(report), "report": report})
        if compare_separate and n > 1:
            args = ["bench", "--config", str(config_path), "--sizes", str(size), "--fps", str(fps),
                    "--seconds", str(seconds)]
            reports = separate(args, n, faces)
            merged = {"seconds": seconds, "per_door": [d for r in reports for d in r["per_door"]]}
            rows.append({"design": f"{n} processes", **summary(merged), "report": merged})
    if as_json:
        print(json.dumps(rows))
        return 0
    first = rows[0]["report"]
    print(f"{first['model']} on {first['provider']}, {size} photos enrolled, {fps:g} frames/s per door, "
          f"{seconds:g} s each, {os.cpu_count()} CPUs; an enrolled face at "
          f"{'every door' if faces is None else f'the first {faces} door(s), an empty corridor at the rest'}")
    print(f"{'design':>14} {'doors':>5} {'p50 ms':>8} {'p95 ms':>8} {'dropped':>8} {'decided/s':>10}")
    for r in rows:
        print(f"{r['design']:>14} {r['doors']:>5} {r['worst_p50_ms']:>8.1f} {r['worst_p95_ms']:>8.1f} "
              f"{r['dropped_pct']:>7.1f}% {r['decided_per_s']:>10.1f}")
    return 0
