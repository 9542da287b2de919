"""Presentation-attack evaluation, per attempt, in ISO/IEC 30107-3's terms, through the door's own code.

    python -m train.spoof_eval [--attempts 100] [--seconds 7] [--fps 10] [--seed 0] [--json OUT]
                               [--preview sheet.png]

The speaker of the shared live clip (`webcam_face.mp4`) is enrolled from
three of its frames through the daemon's enrolment code. Attacks are
*synthesised* from the clip's other frames (train/spoof_attacks.py: prints
still, by hand, bent, with the eyes cut out and live eyes behind them; a
phone showing a photo; a phone replaying the clip): there is no real attack
footage here. Each attempt's frames go through `Pipeline.analyse`
(MediaPipe, the model, the face mesh, the instrument check) once, and are
then decided by a fresh `DecisionMaker` under each liveness configuration, so
the layers can be compared on the same frames (attacks are not decided under
"blink only", which would hold each one for the whole wait; an attempt ends
when every other configuration has granted or refused it, and a granted one is
printed with what the checks saw, frame by frame):

- APCER per species: the share of attack attempts granted (with its one-sided
  95 % Clopper-Pearson upper bound: 0 of 100 still allows up to 3.0 %);
- BPCER: the share of bona fide attempts (windows of the real clip, looped,
  starting at every `--bona-fide-step`th frame) not granted within
  `liveness.max_wait_s` plus the time a grant needs anyway, and how long a
  live person waits (the distribution).

LFW's 13,233 photos hold no attack; the instrument check's false alarms on
them (and on every frame of the live clip) are counted with `--lfw`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from accessd.bench import shared_dir
from accessd.config import Config, LivenessConfig, load_config
from accessd.decide import DecisionMaker
from accessd.gallery import Gallery
from accessd.imageio import read_image, to_rgb
from accessd.pipeline import Pipeline
from accessd.types import FaceResult, Image, Outcome
from train.spoof_attacks import SPECIES, ClipFrame, attack, attack_frames

ENROL_FRAMES = (60, 200, 300)  # the enrolment photos; never printed or shown in an attack
REPO = Path(__file__).resolve().parent.parent


def clip_frames(pipeline: Pipeline) -> list[ClipFrame]:
    cap = cv2.VideoCapture(str(shared_dir() / "data/video/webcam_face.mp4"))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = to_rgb(bgr)
        faces = pipeline.find_faces(rgb)
        if not faces:
            raise RuntimeError(f"no face in frame {len(out)} of the live clip")
        out.append(ClipFrame(rgb, faces[0]))
    cap.release()
    return out


def layers(base: LivenessConfig) -> dict[str, LivenessConfig]:
    """The configurations compared: the default (all on), each check alone, none."""
    off = replace(base, blink=False, instrument=False, motion=False)
    return {"default": base, "blink only": replace(off, blink=True), "instrument only": replace(off, instrument=True),
            "motion only": replace(off, motion=True), "none": off}


def decide_all(config: Config, configs: dict[str, LivenessConfig], frames: Iterable[list[FaceResult]],
               fps: float) -> dict[str, tuple[str, str | None, float | None]]:
    """(outcome, check, seconds) of one attempt under every configuration: a fresh DecisionMaker
    each, and the first grant or suspected spoof ends it for that one. `frames` (each frame's face
    results) are consumed no further than needed: once every configuration has decided."""
    makers = {name: DecisionMaker(config.decision, "spoof_eval", live) for name, live in configs.items()}
    done: dict[str, tuple[str, str | None, float | None]] = {}
    for i, results in enumerate(frames):
        for name, dm in makers.items():
            if name in done:
                continue
            d = dm.update(i, i / fps, results)
            if d is not None and d.outcome is not Outcome.DENY:
                done[name] = (d.outcome.value, str(d.extra["check"]) if "check" in d.extra else None, (i + 1) / fps)
        if len(done) == len(makers):
            break
    return {name: done.get(name, ("none", None, None)) for name in makers}


def traced(frames: Iterator[Image], pipeline: Pipeline, gallery: Gallery,
           trace: list[str]) -> Iterator[list[FaceResult]]:
    """Each frame's face results, noting per frame what the checks saw of the first verified face
    (F: framed, the eye aspect ratio, the face's top + height): why an attack got through."""
    for frame in frames:
        results = pipeline.analyse(frame, gallery).results
        r = next((r for r in results if r.candidate), None)
        trace.append("-" if r is None else f"{'F' if r.instrument else '.'}{r.ear or 0:.2f}@{r.face.y:.0f}+"
                                            f"{r.face.height:.0f}")
        yield results


def upper_95(k: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of a rate seen k times in n: the p at which
    seeing k or fewer has probability 0.05 (bisection on the binomial CDF)."""
    if n == 0 or k >= n:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 0.05 else (lo, mid)
    return hi


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--attempts", type=int, default=100, help="attempts per attack species")
    p.add_argument("--seconds", type=float, default=7.0, help="each attack attempt's length")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--bona-fide-step", type=int, default=3, help="a live window starts every Nth clip frame")
    p.add_argument("--species", default=",".join(SPECIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lfw", type=int, default=0, help="also count instrument false alarms on every Nth LFW photo")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its choice); run species "
                   "in parallel processes with 1 each")
    p.add_argument("--no-bona-fide", action="store_true", help="attacks only (another process runs the live windows)")
    p.add_argument("--json", type=Path)
    p.add_argument("--preview", type=Path, help="write one frame of each species here and stop")
    args = p.parse_args(argv)

    config = load_config(args.config)
    state = Path(tempfile.mkdtemp(prefix="spoof_eval_state_"))
    config = replace(config, state_dir=state, model=replace(config.model, threads=args.threads))
    pipeline = Pipeline(config)
    frames = clip_frames(pipeline)
    rng = np.random.default_rng(args.seed)
    species = [s for s in args.species.split(",") if s]
    n = max(1, round(args.seconds * args.fps))
    if args.preview:
        tiles = [attack(s, frames, 150, 100, n, args.fps, rng)[n // 2] for s in species]
        rows = [np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)]
        rows[-1] = np.hstack([rows[-1], np.zeros((rows[0].shape[0], rows[0].shape[1] - rows[-1].shape[1], 3),
                                                  np.uint8)])
        cv2.imwrite(str(args.preview), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
        pipeline.close()
        return 0

    gallery = _enrol(pipeline, frames)
    configs = layers(config.liveness)
    # Attacks are decided under every layer but "blink only": it would hold every attempt for the
    # whole max_wait_s (the cost of the run), and what it decides follows from the attack: a
    # picture never blinks, a replay or live eyes behind a cut print do.
    attack_configs = {k: v for k, v in configs.items() if k != "blink only"}
    usable = [i for i in range(len(frames)) if all(abs(i - e) > 15 for e in ENROL_FRAMES)]
    report: dict[str, object] = {"attempts_per_species": args.attempts, "seconds": args.seconds, "fps": args.fps,
                                 "seed": args.seed, "synthesised": True, "enrol_frames": list(ENROL_FRAMES)}
    t0 = time.monotonic()
    attacks: dict[str, dict[str, dict[str, object]]] = {}
    for s in species:
        outcomes: dict[str, list[tuple[str, str | None, float | None]]] = {c: [] for c in attack_configs}
        for _ in range(args.attempts):
            photo, start = int(rng.choice(usable)), int(rng.integers(len(frames)))
            frames_of = attack_frames(s, frames, photo, start, n, args.fps, rng)
            trace: list[str] = []
            decided = decide_all(config, attack_configs, traced(frames_of, pipeline, gallery, trace), args.fps)
            for name, result in decided.items():
                outcomes[name].append(result)
            if decided["default"][0] == "grant":  # say how it got through: F = framed; EAR; face top+height
                print(f"{s}: GRANTED photo {photo} start {start}: {' '.join(trace)}", flush=True)
        attacks[s] = {name: _attack_summary(o) for name, o in outcomes.items()}
        print(f"{s}: default {attacks[s]['default']} ({time.monotonic() - t0:.0f} s)", flush=True)
    report["attacks"] = attacks
    if not args.no_bona_fide:
        report["bona_fide"] = _bona_fide(config, pipeline, gallery, frames, configs, args)
    if args.lfw:
        report["instrument_false_alarms"] = _instrument_false_alarms(pipeline, frames, args.lfw)
    _print_table(report, config.liveness)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(state, ignore_errors=True)
    pipeline.close()
    return 0


def _enrol(pipeline: Pipeline, frames: list[ClipFrame]) -> Gallery:
    with tempfile.TemporaryDirectory(prefix="spoof_eval_gallery_") as tmp:
        (Path(tmp) / "speaker").mkdir()
        for i in ENROL_FRAMES:
            cv2.imwrite(str(Path(tmp) / "speaker" / f"frame{i}.png"), cv2.cvtColor(frames[i].image, cv2.COLOR_RGB2BGR))
        return pipeline.load_gallery(Path(tmp))


def _attack_summary(outcomes: list[tuple[str, str | None, float | None]]) -> dict[str, object]:
    granted = sum(1 for o, _, _ in outcomes if o == "grant")
    by_check: dict[str, int] = {}
    for o, check, _ in outcomes:
        if o == "spoof_suspected":
            by_check[str(check)] = by_check.get(str(check), 0) + 1
    return {"attempts": len(outcomes), "granted": granted, "apcer": granted / max(len(outcomes), 1),
            "apcer_upper_95": upper_95(granted, len(outcomes)), "refused_by": by_check,
            "undecided": sum(1 for o, _, _ in outcomes if o == "none")}


def _bona_fide(config: Config, pipeline: Pipeline, gallery: Gallery, frames: list[ClipFrame],
               configs: dict[str, LivenessConfig], args: argparse.Namespace) -> dict[str, object]:
    """Windows of the real clip, looped, at `--fps`; each frame analysed once and reused."""
    step = max(1, round(30 / args.fps))
    analysed: dict[int, list[FaceResult]] = {}
    limit = config.liveness.max_wait_s + 2.0  # the wait, plus what a grant needs anyway
    n = round(limit * args.fps)
    out: dict[str, object] = {"windows": 0, "window_s": limit}
    waits: dict[str, list[float | None]] = {c: [] for c in configs}
    starts = range(0, len(frames), args.bona_fide_step)
    def window(start: int) -> Iterator[list[FaceResult]]:
        for i in range(n):
            k = (start + i * step) % len(frames)
            if k not in analysed:
                analysed[k] = pipeline.analyse(frames[k].image, gallery).results
            yield analysed[k]

    for start in starts:
        for name, (outcome, _, seconds) in decide_all(config, configs, window(start), args.fps).items():
            waits[name].append(seconds if outcome == "grant" else None)
    out["windows"] = len(starts)
    for name, w in waits.items():
        got = sorted(x for x in w if x is not None)
        out[name] = {"granted": len(got), "bpcer": 1 - len(got) / len(w),
                     "wait_s": {q: round(float(np.percentile(got, q)), 2) for q in (10, 25, 50, 75, 90, 100)}
                     if got else {}, "median_wait_s": round(statistics.median(got), 2) if got else None}
    return out


def _instrument_false_alarms(pipeline: Pipeline, frames: list[ClipFrame], every: int) -> dict[str, object]:
    from accessd.align import nearest_to_center
    from accessd.instrument import picture_frame

    clip = sum(1 for f in frames if picture_frame(f.image, f.face))
    photos = sorted((shared_dir() / "data/lfw").glob("*/*.jpg"))[::every]
    flagged, faces = [], 0
    for path in photos:
        image = read_image(path)
        face = nearest_to_center(pipeline.detector.detect(image), image.shape[1], image.shape[0])
        if face is None:
            continue
        faces += 1
        if picture_frame(image, face):
            flagged.append(path.name)
    return {"clip_frames": len(frames), "clip_flagged": clip, "lfw_photos": len(photos), "lfw_with_face": faces,
            "lfw_flagged": len(flagged), "lfw_rate": len(flagged) / max(faces, 1), "lfw_flagged_names": flagged}


def _print_table(report: dict[str, object], live: LivenessConfig) -> None:
    attacks = report["attacks"]
    assert isinstance(attacks, dict)
    print(f"\nAttacks (synthesised), {report['attempts_per_species']} attempts each, "
          f"{report['seconds']} s at {report['fps']} frames/s; APCER = share granted (95 % upper bound)")
    names = list(next(iter(attacks.values())).keys())
    print("| species | " + " | ".join(names) + " | refused by (default) |")
    print("|---" * (len(names) + 2) + "|")
    for s, per in attacks.items():
        cells = [f"{v['apcer']:.1%} ({v['apcer_upper_95']:.1%})" for v in per.values()]
        print(f"| {s} | " + " | ".join(cells) + f" | {per['default']['refused_by']} |")
    bona = report.get("bona_fide")
    if isinstance(bona, dict):
        print(f"\nBona fide: {bona['windows']} windows of the real clip, each {bona['window_s']:.0f} s "
              f"(max_wait_s {live.max_wait_s:.0f} s + 2 s)")
        print("| configuration | BPCER | median wait | wait percentiles (10/25/50/75/90/100) |")
        print("|---|---|---|---|")
        for name in [k for k, v in bona.items() if isinstance(v, dict)]:
            b = bona[name]
            pct = "/".join(str(v) for v in b["wait_s"].values())
            print(f"| {name} | {b['bpcer']:.1%} | {b['median_wait_s']} s | {pct} |")
    if "instrument_false_alarms" in report:
        fa = report["instrument_false_alarms"]
        assert isinstance(fa, dict)
        print(f"\nInstrument check false alarms: live clip {fa['clip_flagged']} of {fa['clip_frames']} frames; "
              f"LFW {fa['lfw_flagged']} of {fa['lfw_with_face']} photos with a face ({fa['lfw_rate']:.3%})")


if __name__ == "__main__":
    raise SystemExit(main())
