""""Not this person" on people never trained on: a door evaluation's wrong grants, marked, then every attempt again.

    python -m train.negatives_eval --model models/accessd-fused.onnx \\
        --people ../shared/data/lfw-protocol/pairsDevTest.txt --draws 3 [--gallery-people 20] [--json]

Run 1 is `train.door_eval` at the configured thresholds (the same draws,
attempts and seed; liveness off for LFW stills). Every stranger let in as P,
and every genuine attempt let in as someone else P, is then marked the way the
console's "not P" button does it: the deciding frame's snapshot (the
daemon's context crop, as JPEG) is written to `P/not-this-person/` in the
draw's gallery folder, and the gallery is loaded again through the daemon's
own code (`Pipeline.load_gallery`). With `--mark-near`, strangers verified as
P in some frame but not let in are marked too. Run 2 analyses every attempt
of every draw afresh through `Pipeline.analyse` against that gallery and
decides it with the daemon's `score_faces` (negatives included) and
`DecisionMaker`. Reported: both runs' genuine grants, wrong-person grants and
strangers let in, and what became of each marked attempt.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from accessd.align import context_crop
from accessd.decide import DecisionMaker, Thresholds
from accessd.gallery import NEGATIVES_DIR, Gallery
from accessd.imageio import read_image
from accessd.pipeline import Pipeline
from accessd.types import Image, Outcome
from train.door_eval import (
    Seen,
    attempt_args,
    draw,
    eval_pipeline,
    held_photo_frames,
    labelled_face,
    people_test_parser,
    read_people,
)


@dataclass
class Attempt:
    draw: int
    index: int  # its frames' seed
    person: str | None
    photo: str
    frames: list[Seen]


def frames_of(args: argparse.Namespace, photo: str, index: int) -> list[tuple[Image, tuple[float, float]]]:
    return held_photo_frames(read_image(args.data / photo), args.seconds, args.fps, np.random.default_rng(index))


def decide(attempt: Attempt, gallery: Gallery, t: Thresholds, pipeline: Pipeline,
           fps: float) -> tuple[str | None, int | None, str | None, set[str]]:
    """(granted person, deciding frame, first deny reason, people it was verified as in some frame)."""
    dm = DecisionMaker(pipeline.config.decision, "negatives_eval")
    denied, verified_as = None, set()
    for i, seen in enumerate(attempt.frames):
        results = seen.results(gallery, t)
        verified_as |= {r.candidate for r in results if r.candidate is not None}
        d = dm.update(i, i / fps, results)
        if d is None:
            continue
        if d.outcome is Outcome.GRANT:
            return d.person, i, denied, verified_as
        denied = denied or d.reason
    return None, None, denied, verified_as


def summary(attempts: list[Attempt], outcomes: list[tuple[str | None, int | None, str | None, set[str]]]
            ) -> dict[str, object]:
    genuine = [(a, o) for a, o in zip(attempts, outcomes, strict=True) if a.person is not None]
    return {
        "genuine_attempts": len(genuine),
        "genuine_granted": sum(1 for a, o in genuine if o[0] == a.person),
        "granted_as_someone_else": [f"{a.photo} as {o[0]}" for a, o in genuine if o[0] not in (None, a.person)],
        "stranger_attempts": sum(1 for a in attempts if a.person is None),
        "strangers_granted": [f"{a.photo} as {o[0]}" for a, o in zip(attempts, outcomes, strict=True)
                              if a.person is None and o[0] is not None],
        "not_this_person_denies": sum(1 for o in outcomes if o[2] is not None and o[2].startswith("not this person")),
    }


def main(argv: list[str] | None = None) -> int:
    p = people_test_parser(__doc__)
    attempt_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mark-near", action="store_true", help="also mark strangers verified in a frame, not let in")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    pipeline = eval_pipeline(args, "negatives_eval_state_")
    t = pipeline.thresholds
    rng = np.random.default_rng(args.seed)
    photos = {q: sorted(f"{q}/{f.name}" for f in (args.data / q).glob("*.jpg")) for q in read_people(args.people)}
    work = Path(tempfile.mkdtemp(prefix="negatives_eval_"))
    attempts: list[Attempt] = []
    plans: list[list[tuple[str | None, str]]] = []
    galleries: list[Gallery] = []
    for n in range(args.draws):
        gallery, plan = draw(pipeline, photos, args, rng, work / f"draw{n}")
        galleries.append(gallery)
        plans.append(plan)
        for who, rel in plan:
            i = len(attempts)
            frames = [labelled_face(pipeline, f, c, gallery) for f, c in frames_of(args, rel, i)]
            attempts.append(Attempt(n, i, who, rel, frames))
    before = [decide(a, galleries[a.draw], t, pipeline, args.fps) for a in attempts]

    # Mark: the deciding frame's snapshot, as the console keeps it, into the person's not-this-person folder.
    marked = []
    for a, (granted, at, _, verified_as) in zip(attempts, before, strict=True):
        wrong = granted is not None and granted != a.person
        near = args.mark_near and a.person is None and granted is None and verified_as
        if not (wrong or near):
            continue
        as_whom = granted if wrong else sorted(verified_as)[0]
        frames = frames_of(args, a.photo, a.index)
        k = at if at is not None else next(i for i, f in enumerate(a.frames) if f.faces)
        image, _ = frames[k]
        face = a.frames[k].faces[0]
        snapshot = cv2.cvtColor(context_crop(image, face, scale=4.0), cv2.COLOR_RGB2BGR)
        folder = work / f"draw{a.draw}" / str(as_whom) / NEGATIVES_DIR
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"attempt{a.index}.jpg"), snapshot, [cv2.IMWRITE_JPEG_QUALITY, 90])
        marked.append({"attempt": a.index, "photo": a.photo, "marked_not": as_whom, "granted_before": granted})
    after_galleries = [pipeline.load_gallery(work / f"draw{n}") for n in range(args.draws)]
    negatives = sum(len(g.negative_of) for g in after_galleries)
    again = [Attempt(a.draw, a.index, a.person, a.photo,
                     [labelled_face(pipeline, f, c, after_galleries[a.draw])
                      for f, c in frames_of(args, a.photo, a.index)])
             for a in attempts]
    after = [decide(a, after_galleries[a.draw], t, pipeline, args.fps) for a in again]
    pipeline.close()
    by_index = {a.index: o for a, o in zip(again, after, strict=True)}
    for m in marked:
        o = by_index[int(m["attempt"])]
        m["granted_after"] = o[0]
        m["reason_after"] = o[2]
    report = {
        "model": str(args.model), "people_from": str(args.people), "draws": args.draws,
        "enrolled_people": sum(len(g.people) for g in galleries), "photos_each": args.enrol,
        "thresholds": vars(t), "marked": marked, "negative_examples_in_use": negatives,
        "before": summary(attempts, before), "after": summary(again, after),
    }
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    print(f"{report['enrolled_people']} people never trained on in {args.draws} draw(s), {args.enrol} photos each; "
          f"liveness off (LFW stills); thresholds {t}")
    for name in ("before", "after"):
        s = report[name]
        assert isinstance(s, dict)
        print(f"{name:6s}: genuine {s['genuine_granted']}/{s['genuine_attempts']}, "
              f"as someone else {len(s['granted_as_someone_else'])}, "
              f"strangers let in {len(s['strangers_granted'])}/{s['stranger_attempts']} {s['strangers_granted']}, "
              f"'not this person' denies {s['not_this_person_denies']}")
    print(f"marked {len(marked)} snapshot(s), {negatives} in use as negative examples:")
    for m in marked:
        print(f"  {m['photo']}: not {m['marked_not']} (granted before: {m['granted_before']}); "
              f"after: {m['granted_after'] or 'denied'} ({m['reason_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
