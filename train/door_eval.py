"""Per-attempt door evaluation: people the model never saw, through the daemon's own pipeline.

    python -m train.door_eval --model models/accessd-resnet.onnx \\
        --people ../shared/data/lfw-protocol/pairsDevTest.txt [--enrol 3] [--gallery-people 20] [--json]

A door is judged per attempt, not per frame or pair. `--gallery-people` people
of the list (each with more than `--enrol` photos) are enrolled with their
first `--enrol` photos through the daemon's enrolment code (`Pipeline.load_gallery`
on a real folder). Each attempt is one photo held before the camera for
`--seconds`: `--fps` frames of 640x480 with the photo pasted in, drifting,
turning and changing size a little as a hand would hold it, with sensor noise.
Every frame goes through `Pipeline.analyse` (MediaPipe, alignment, ONNX
Runtime) and a fresh `DecisionMaker` (the configured confirm_frames of
confirm_window, the look-alike guards). Only the face nearest the held photo's
centre is decided on: LFW's labelled person. Other faces in a photo are other
real people (Hugh Grant's photo with Sandra Bullock beside him would otherwise
count as a wrong grant when she is enrolled, though the door is right).
`--draws` repeats the whole test with other enrolled people, pooled. Genuine attempts are each enrolled
person's next `--probes` photos; stranger attempts are photos of the list's
other people, one per person in turn, up to `--strangers`.

Reported for each detection_threshold of a sweep (the frames are analysed once
and re-decided per threshold): genuine attempts granted as themselves and how
fast, genuine attempts granted as someone else (the wrong-person chances), and
strangers granted. `--people` may also be a training run's state.json, whose
held-out people choose the shipped threshold without touching pairsDevTest.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from accessd.config import LivenessConfig, load_config
from accessd.decide import DecisionMaker, Thresholds, score_faces
from accessd.gallery import Gallery
from accessd.imageio import read_image
from accessd.pipeline import Pipeline
from accessd.types import Face, FaceResult, Floats, Image, Outcome
from train.pairs import load_pairs


@dataclass(frozen=True)
class Seen:
    """One frame of an attempt as the pipeline saw it, kept to the held photo's face: its pair
    scores and its scores against each person's template, the faces marked "not this person" and
    the model's cohort (None where the frame had no face, the gallery no such faces, the model no cohort)."""

    faces: list[Face]
    scores: Floats | None = None
    templates: Floats | None = None
    negatives: Floats | None = None
    cohort: Floats | None = None

    def results(self, gallery: Gallery, t: Thresholds) -> list[FaceResult]:
        if self.scores is None:
            return []
        return score_faces(self.faces, self.scores, gallery, t, self.templates, self.negatives, self.cohort)


@dataclass
class Attempt:
    person: str | None  # the enrolled person it is, None for a stranger
    photo: str
    frames: list[Seen]
    gallery: Gallery


def held_photo_frames(photo: Image, seconds: float, fps: float, rng: np.random.Generator,
                      width: int = 640, height: int = 480) -> list[tuple[Image, tuple[float, float]]]:
    """A photo held before the camera: small drifts of position, scale and roll, and sensor noise.

    Each frame comes with where the photo's centre is in it.
    """
    n = max(1, round(seconds * fps))
    h, w = photo.shape[:2]
    start = np.array([rng.uniform(-60, 60), rng.uniform(-30, 30), rng.uniform(0.9, 1.4), rng.uniform(-6, 6)])
    drift = np.array([rng.uniform(-20, 20), rng.uniform(-10, 10), rng.uniform(-0.1, 0.1), rng.uniform(-3, 3)])
    frames = []
    background = np.full((height, width, 3), rng.integers(60, 140), np.uint8)
    for i in range(n):
        dx, dy, scale, roll = start + drift * (i / max(n - 1, 1)) + rng.normal(0, [1.5, 1.5, 0.01, 0.4])
        m = cv2.getRotationMatrix2D((w / 2, h / 2), roll, scale)
        m[:, 2] += (width / 2 + dx - w / 2, height / 2 + dy - h / 2)
        frame = cv2.warpAffine(photo, m, (width, height), dst=background.copy(), borderMode=cv2.BORDER_TRANSPARENT)
        noisy = frame.astype(np.float32) + rng.normal(0, 3.0, frame.shape).astype(np.float32)
        frames.append((np.clip(noisy, 0, 255).astype(np.uint8), (width / 2 + dx, height / 2 + dy)))
    return frames


def decide_attempt(attempt: Attempt, thresholds: Thresholds, pipeline: Pipeline,
                   fps: float) -> tuple[str | None, float | None, str | None]:
    """(granted person, seconds to the grant, the first deny's reason) for one attempt."""
    dm = DecisionMaker(pipeline.config.decision, "door_eval")
    denied = None
    for i, seen in enumerate(attempt.frames):
        decision = dm.update(i, i / fps, seen.results(attempt.gallery, thresholds))
        if decision is None:
            continue
        if decision.outcome is Outcome.GRANT:
            return decision.person, (i + 1) / fps, denied
        denied = denied or decision.reason
    return None, None, denied


def draw(pipeline: Pipeline, photos: dict[str, list[str]], args: argparse.Namespace,
         rng: np.random.Generator, folder: Path | None = None) -> tuple[Gallery, list[tuple[str | None, str]]]:
    """Enrol a random set of people through the daemon's enrolment code; plan their and strangers' attempts.

    The gallery folder is `folder` when given (kept, for a later change), else a temporary one."""
    eligible = [q for q in photos if len(photos[q]) > args.enrol]
    enrolled = sorted(rng.choice(eligible, min(args.gallery_people, len(eligible)), replace=False).tolist())
    with tempfile.TemporaryDirectory(prefix="door_eval_gallery_") as tmp:
        root = folder or Path(tmp)
        for q in enrolled:
            (root / q).mkdir(parents=True)
            for rel in photos[q][: args.enrol]:
                shutil.copy(args.data / rel, root / rel)
        gallery = pipeline.load_gallery(root)
    others = [q for q in photos if q not in enrolled]
    order = rng.permutation(len(others))
    strangers: list[str] = []
    for round_ in range(max((len(photos[q]) for q in others), default=0)):
        strangers += [photos[others[i]][round_] for i in order if round_ < len(photos[others[i]])]
    plan: list[tuple[str | None, str]] = [
        (q, rel) for q in gallery.people for rel in photos[q][args.enrol : args.enrol + args.probes]]
    plan += [(None, rel) for rel in strangers[: args.strangers]]
    return gallery, plan


def labelled_face(pipeline: Pipeline, frame: Image, centre: tuple[float, float], gallery: Gallery) -> Seen:
    """The frame through the daemon's pipeline, kept to the face nearest the held photo's centre."""
    a = pipeline.analyse(frame, gallery, with_templates=True)
    if not a.faces or a.scores is None:
        return Seen([])
    i = min(range(len(a.faces)),
            key=lambda j: (a.faces[j].center[0] - centre[0]) ** 2 + (a.faces[j].center[1] - centre[1]) ** 2)

    def row(m: Floats | None) -> Floats | None:
        return None if m is None else m[i : i + 1]

    return Seen([a.faces[i]], row(a.scores), row(a.template_scores), row(a.negative_scores), row(a.cohort))


def read_people(path: Path) -> list[str]:
    if path.suffix == ".json":
        return sorted(json.loads(path.read_text())["validation_people"])
    return sorted(load_pairs(path).people)


Outcome3 = tuple[str | None, float | None, str | None]  # granted person, seconds to grant, first deny reason


def summarise(attempts: list[Attempt], outcomes: list[Outcome3]) -> dict[str, object]:
    genuine = [(a, o) for a, o in zip(attempts, outcomes, strict=True) if a.person is not None]
    strangers = [o for a, o in zip(attempts, outcomes, strict=True) if a.person is None]
    right = [o[1] for a, o in genuine if o[0] == a.person and o[1] is not None]
    wrong = [f"{a.photo} as {o[0]}" for a, o in genuine if o[0] is not None and o[0] != a.person]
    let_in = [f"{a.photo} as {o[0]}" for a, o in zip(attempts, outcomes, strict=True)
              if a.person is None and o[0] is not None]
    ambiguous = sum(1 for o in outcomes if o[2] is not None and o[2].startswith("ambiguous"))
    missed = [f"{a.photo}: {o[2] or 'no decision (face not found in enough frames)'}"
              for a, o in genuine if o[0] is None]
    return {
        "genuine_attempts": len(genuine),
        "genuine_granted": len(right),
        "genuine_granted_rate": len(right) / max(len(genuine), 1),
        "seconds_to_grant_median": float(np.median(right)) if right else None,
        "seconds_to_grant_max": float(np.max(right)) if right else None,
        "granted_as_someone_else": len(wrong),
        "wrong_person_examples": wrong[:5],
        "stranger_attempts": len(strangers),
        "strangers_granted": len(let_in),
        "stranger_examples": let_in[:10],
        "ambiguous_denies": ambiguous,
        "genuine_missed": missed,
    }


def people_test_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of every test on unseen people: the model, whose photos, and where they are."""
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared"))
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--people", type=Path, required=True, help="pair list (or a run's state.json) naming the people")
    p.add_argument("--data", type=Path, default=shared / "data/lfw")
    return p


def attempt_args(p: argparse.ArgumentParser) -> None:
    """The arguments of a door evaluation's draws and attempts (door_eval, negatives_eval)."""
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="decision settings (defaults: config.yaml)")
    p.add_argument("--enrol", type=int, default=3)
    p.add_argument("--probes", type=int, default=5)
    p.add_argument("--gallery-people", type=int, default=20)
    p.add_argument("--strangers", type=int, default=250)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--draws", type=int, default=1, help="repeat with this many random sets of enrolled people")


def eval_pipeline(args: argparse.Namespace, prefix: str) -> Pipeline:
    """The daemon's pipeline with the configured decisions, the model under test and liveness off.

    LFW holds still photos: no blink, no motion, and some have a picture's edge. The liveness checks are
    measured apart (train/spoof_eval.py); here they are off, so the numbers measure recognition alone
    and stay comparable with earlier reports.
    """
    config = load_config(args.config) if args.config.is_file() else load_config(None)
    config = replace(config, model=replace(config.model, path=args.model.resolve()),
                     state_dir=Path(tempfile.mkdtemp(prefix=prefix)),
                     liveness=LivenessConfig(blink=False, instrument=False, motion=False))
    return Pipeline(config)


def main(argv: list[str] | None = None) -> int:
    p = people_test_parser(__doc__)
    attempt_args(p)
    p.add_argument("--thresholds", type=float, nargs="*", help="detection thresholds to sweep (default: a grid)")
    p.add_argument("--verifications", type=float, nargs="*",
                   help="verification thresholds to sweep (default: the configured one)")
    p.add_argument("--score-margins", type=float, nargs="*",
                   help="score margins to sweep (default: the configured one)")
    p.add_argument("--template-thresholds", type=float, nargs="*",
                   help="template thresholds to sweep; a negative value means no template check "
                        "(default: the configured one)")
    p.add_argument("--cohort-thresholds", type=float, nargs="*",
                   help="cohort thresholds to sweep; a negative value means no cohort check "
                        "(default: the configured one, or the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--analysis-cache", type=Path,
                   help="keep the analysed frames here (pickle), so another sweep of thresholds skips the pipeline")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    pipeline = eval_pipeline(args, "door_eval_state_")
    config = pipeline.config
    rng = np.random.default_rng(args.seed)
    people = read_people(args.people)
    photos = {q: sorted(f"{q}/{f.name}" for f in (args.data / q).glob("*.jpg")) for q in people}
    attempts: list[Attempt] = []
    galleries: list[Gallery] = []
    if args.analysis_cache and args.analysis_cache.is_file():
        with args.analysis_cache.open("rb") as fh:
            attempts, galleries = pickle.load(fh)  # our own file, written below
    for _ in range(args.draws if not attempts else 0):
        gallery, plan = draw(pipeline, photos, args, rng)
        galleries.append(gallery)
        for who, rel in plan:
            frames = held_photo_frames(read_image(args.data / rel), args.seconds, args.fps,
                                       np.random.default_rng(len(attempts)))
            attempts.append(Attempt(who, rel, [labelled_face(pipeline, f, c, gallery) for f, c in frames], gallery))

    if args.analysis_cache and not args.analysis_cache.is_file():
        with args.analysis_cache.open("wb") as fh:
            pickle.dump((attempts, galleries), fh)
    d = config.decision
    enrolled = sum(len(g.people) for g in galleries)
    default_t = pipeline.thresholds.detection
    grid = args.thresholds or [round(t, 2) for t in np.arange(0.30, 0.96, 0.05)]
    rows = []
    templates = ([None if x < 0 else x for x in args.template_thresholds] if args.template_thresholds is not None
                 else [d.template_threshold])
    default_c = pipeline.thresholds.cohort
    cohorts = ([None if x < 0 else x for x in args.cohort_thresholds] if args.cohort_thresholds is not None
               else [default_c])
    for v in args.verifications or [d.verification_threshold]:
        for sm in args.score_margins or [d.score_margin]:
            for tt in templates:
                for ct in cohorts:
                    for t in sorted({*grid, round(default_t, 4)}):
                        th = Thresholds(float(t), v, d.margin, sm, tt, ct)
                        outcomes = [decide_attempt(a, th, pipeline, args.fps) for a in attempts]
                        rows.append({"detection_threshold": float(t), "verification_threshold": v,
                                     "score_margin": sm, "template_threshold": tt, "cohort_threshold": ct,
                                     **summarise(attempts, outcomes)})
    pipeline.close()
    report = {
        "model": str(args.model), "people_from": str(args.people), "enrolled_people": enrolled,
        "enrolled_photos": sum(len(g.photos) for g in galleries), "draws": args.draws, "photos_each": args.enrol,
        "seconds": args.seconds, "fps": args.fps,
        "confirm": f"{d.confirm_frames} of {d.confirm_window}", "verification_threshold": d.verification_threshold,
        "margin": d.margin, "score_margin": d.score_margin, "default_threshold": default_t, "rows": rows,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    g = rows[0]["genuine_attempts"]
    print(f"{enrolled} people never trained on in {args.draws} draw(s), enrolled with {args.enrol} photos each "
          f"({report['enrolled_photos']} in use); {g} genuine and {rows[0]['stranger_attempts']} stranger "
          f"attempts, each a photo held "
          f"{args.seconds} s at {args.fps:g} frames/s; confirm {d.confirm_frames} of {d.confirm_window}, "
          f"score_margin {d.score_margin}; model threshold {default_t:.3f}")
    print("verif  margin  template  cohort  threshold  genuine granted  median s  max s  granted as someone else"
          "  strangers granted  ambiguous")
    for r in rows:
        default = (abs(r["detection_threshold"] - default_t) < 1e-9
                   and r["verification_threshold"] == d.verification_threshold
                   and r["score_margin"] == d.score_margin
                   and r["template_threshold"] == d.template_threshold
                   and r["cohort_threshold"] == default_c)
        mark = " *" if default else ""
        med = r["seconds_to_grant_median"]
        mx = r["seconds_to_grant_max"]
        tt, ct = r["template_threshold"], r["cohort_threshold"]
        print(f"{r['verification_threshold']:5.2f}  {r['score_margin']:6.2f}  "
              f"{'off' if tt is None else format(tt, '.2f'):>8s}  {'off' if ct is None else format(ct, '.2f'):>6s}  "
              f"{r['detection_threshold']:9.3f}  "
              f"{r['genuine_granted']:4d}/{g} {r['genuine_granted_rate']:6.1%}  "
              f"{med if med is not None else float('nan'):8.2f}  {mx if mx is not None else float('nan'):5.2f}  "
              f"{r['granted_as_someone_else']:23d}  {r['strangers_granted']:8d}/{r['stranger_attempts']}"
              f"  {r['ambiguous_denies']:9d}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
