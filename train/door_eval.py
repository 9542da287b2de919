"""Door-level evaluation: the daemon's own two-threshold decision on unseen people.

    python -m train.door_eval --model models/accessd-compact.onnx \\
        --people ../shared/data/lfw-protocol/pairsDevTest.txt [--enrol 10] [--probes 10] [--json]

Every person of the list with more than --enrol photos (or the first
--gallery-people of them) is enrolled with their
first --enrol photos; their next --probes photos are genuine attempts. Every
photo of the list's other people is an impostor attempt against the whole
gallery. Each attempt is decided by `accessd.decide.score_faces` (ratio above
verification_threshold, margin over the runner-up) for a range of
detection_threshold values, so the report shows what a door would do, per
single frame (the daemon also needs K of N frames to agree).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from accessd.decide import Thresholds, score_faces
from accessd.gallery import Gallery, Photo
from accessd.model import SiameseModel
from accessd.types import Face
from train.evaluate import pair_crops
from train.pairs import Pair, PairList, load_pairs


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--people", type=Path, required=True, help="pair list whose people are used")
    p.add_argument("--data", type=Path, default=shared / "data/lfw")
    p.add_argument("--enrol", type=int, default=10)
    p.add_argument("--probes", type=int, default=10)
    p.add_argument("--gallery-people", type=int, default=0,
                   help="enrol only the first N eligible people (a household door), 0 for all")
    p.add_argument("--verification", type=float, default=0.5)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    model = SiameseModel(args.model)
    people = sorted(load_pairs(args.people).people)
    photos = {q: sorted(f"{q}/{f.name}" for f in (args.data / q).glob("*.jpg")) for q in people}
    enrolled = [q for q in people if len(photos[q]) > args.enrol]
    if args.gallery_people:
        enrolled = enrolled[: args.gallery_people]
    everyone = PairList(tuple(Pair(ph, ph, True, 0) for q in people for ph in photos[q]), 1)
    crops = pair_crops(everyone, args.data, model.input_size, model.contract.crop_margin, args.cache_dir)
    gal_photos = [ph for q in enrolled for ph in photos[q][: args.enrol]]
    names = tuple(enrolled)
    gallery = Gallery(
        embeddings=model.embed(np.stack([crops[ph] for ph in gal_photos])),
        person_of=np.asarray([names.index(ph.split("/")[0]) for ph in gal_photos]),
        people=names,
        photos=tuple(Photo(ph.split("/")[0], Path(ph), ph) for ph in gal_photos),
    )
    genuine = [(q, ph) for q in enrolled for ph in photos[q][args.enrol : args.enrol + args.probes]]
    impostor = [(None, ph) for q in people if q not in enrolled for ph in photos[q]]
    attempts = genuine + impostor
    probe = np.stack([crops[ph] for _, ph in attempts])
    _, scores = model.embed_and_score(probe, gallery.embeddings)
    face = Face(0, 0, 1, 1, 1.0)
    rows = []
    grid = set(np.round(np.arange(0.30, 0.96, 0.05), 2).tolist()) | {round(model.contract.detection_threshold, 3)}
    for t in sorted(grid):
        th = Thresholds(float(t), args.verification, args.margin)
        results = score_faces([face] * len(attempts), scores, gallery, th)
        cand = [r.candidate for r in results]
        g = len(genuine)
        tar = float(np.mean([c == q for c, (q, _) in zip(cand[:g], genuine, strict=True)]))
        wrong = float(np.mean([c is not None and c != q for c, (q, _) in zip(cand[:g], genuine, strict=True)]))
        far = float(np.mean([c is not None for c in cand[g:]])) if impostor else 0.0
        rows.append({"detection_threshold": float(t), "genuine_accept": tar, "genuine_as_other": wrong,
                     "impostor_accept": far})
    report = {"model": str(args.model), "enrolled_people": len(enrolled), "photos_each": args.enrol,
              "genuine_attempts": len(genuine), "impostor_attempts": len(impostor),
              "model_threshold": model.contract.detection_threshold, "rows": rows}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{len(enrolled)} people enrolled with {args.enrol} photos; {len(genuine)} genuine and "
              f"{len(impostor)} impostor single-frame attempts (model threshold "
              f"{model.contract.detection_threshold:.3f})")
        print("threshold  genuine_accept  genuine_as_other  impostor_accept")
        for r in rows:
            print(f"{r['detection_threshold']:9.2f}  {r['genuine_accept']:14.3f}  {r['genuine_as_other']:16.3f}  "
                  f"{r['impostor_accept']:15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
