"""`accessd bench`: frames/s and per-frame latency against gallery sizes, on real faces.

Frames are 640x480 with one real, enrolled LFW face pasted in (so the liveness
signals are computed on every frame, as for a person at the door); the gallery is built from
real LFW photos through the enrolment path (detect -> align -> embed), padded
by repetition when fewer distinct photos are at hand. Each frame runs the full
per-frame path: detect, align, embed + score against the whole gallery, decide.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from accessd.config import Config
from accessd.decide import DecisionMaker
from accessd.gallery import Gallery
from accessd.imageio import read_image
from accessd.model import ALWAYS, FaceCrops, stack
from accessd.pipeline import Pipeline
from accessd.types import Image


def shared_dir() -> Path:
    return Path(os.environ.get("ACCESSD_SHARED", "../shared"))


def bench_frame(face_photo: Image, width: int = 640, height: int = 480) -> Image:
    """A plain grey frame with the photo pasted in its centre (benchmarks and test videos)."""
    frame = np.full((height, width, 3), 90, np.uint8)
    h, w = face_photo.shape[:2]
    y, x = (height - h) // 2, (width - w) // 2
    frame[y : y + h, x : x + w] = face_photo
    return frame


def build_gallery(pipeline: Pipeline, size: int, photos: list[Path]) -> Gallery:
    crops: list[FaceCrops] = []
    people: list[str] = []
    for path in photos:
        if len(crops) >= size:
            break
        image = read_image(path)
        faces = pipeline.detector.detect(image)
        if not faces:
            continue
        crops.append(pipeline.crop(image, max(faces, key=lambda f: f.area)))
        people.append(path.parent.name)
    reps = -(-size // len(crops))
    emb = np.tile(pipeline.model.embed(stack(crops)), (reps, 1))[:size]
    names = (people * reps)[:size]
    unique = tuple(sorted(set(names)))
    index = {p: i for i, p in enumerate(unique)}
    from accessd.gallery import Photo

    return Gallery(
        embeddings=emb.astype(np.float32),
        person_of=np.asarray([index[p] for p in names], np.int64),
        people=unique,
        photos=tuple(Photo(p, Path(p), str(i)) for i, p in enumerate(names)),
    )


def run_detector_bench(config: Config, photos: int = 40) -> int:
    """Faces found by each BlazeFace model on LFW faces pasted into 640x480 and 1280x720 frames."""
    from accessd.detector import FaceDetector
    from accessd.provision import DETECTORS, model_path

    people = sorted(p for p in (shared_dir() / "data/lfw").iterdir() if p.is_dir())[:photos]
    faces = [read_image(sorted(p.glob("*.jpg"))[0]) for p in people]
    report = {}
    for name in DETECTORS:
        with FaceDetector(model_path(config.detector.models_dir, name), config.detector.min_confidence) as det:
            for w, h in ((640, 480), (1280, 720)):
                found = sum(1 for f in faces if det.detect(bench_frame(f, w, h)))
                report[f"{name}@{w}x{h}"] = f"{found}/{len(faces)}"
    print(json.dumps(report))
    return 0


def run_bench(config: Config, sizes: list[int], frames: int, as_json: bool, cascade: bool = True) -> int:
    lfw = shared_dir() / "data/lfw"
    # Two frames. The enrolled face (three other photos of him come first) costs what a
    # verified face costs: every tower, the liveness signals too. The stranger (the last
    # person in LFW, never in these galleries) costs what a passer-by costs: with a fused
    # model's cascade, the first tower alone unless he resembles someone enrolled.
    bush = sorted(lfw.glob("George_W_Bush/*.jpg"))
    photos = bush[1:4] + sorted(lfw.glob("*/*.jpg"))[: max(sizes) + 50]
    stranger = sorted(lfw.glob("*/*.jpg"))[-1]
    pipeline = Pipeline(config)
    if not cascade:
        pipeline.model.gate = ALWAYS
    shown = {"enrolled": bench_frame(read_image(bush[0])), "stranger": bench_frame(read_image(stranger))}
    results = []
    for size in sizes:
        gallery = build_gallery(pipeline, size, photos)
        for kind, frame in shown.items():
            decider = DecisionMaker(config.decision, "bench", config.liveness)
            for _ in range(10):  # warm caches and allocator
                pipeline.analyse(frame, gallery)
            latencies = []
            start = time.perf_counter()
            for i in range(frames):
                t0 = time.perf_counter()
                analysis = pipeline.analyse(frame, gallery)
                decider.update(i, i / 30.0, analysis.results)
                latencies.append((time.perf_counter() - t0) * 1000.0)
            elapsed = time.perf_counter() - start
            q = statistics.quantiles(latencies, n=20)
            results.append({
                "gallery_size": size,
                "face": kind,
                "fps": round(frames / elapsed, 2),
                "latency_ms_p50": round(statistics.median(latencies), 3),
                "latency_ms_p95": round(q[18], 3),
            })
    report = {
        "frame": "640x480, one face",
        "frames_per_size": frames,
        "provider": pipeline.model.provider,
        "liveness": {"blink": config.liveness.blink, "instrument": config.liveness.instrument,
                     "motion": config.liveness.motion},
        "model": pipeline.model.path.name,
        "cascade": pipeline.model.gate != ALWAYS,
        "detector": pipeline.detector.model_path.name,
        "cpu_count": os.cpu_count(),
        "galleries": results,
    }
    if as_json:
        print(json.dumps(report))
    else:
        print(f"provider {report['provider']}, model {report['model']}, detector {report['detector']}")
        for r in results:
            print(f"gallery {r['gallery_size']:>5}, {r['face']:8s}: {r['fps']:7.1f} frames/s  "
                  f"p50 {r['latency_ms_p50']:.2f} ms  p95 {r['latency_ms_p95']:.2f} ms")
    pipeline.close()
    return 0
