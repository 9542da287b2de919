"""How far any decision rule could take the door: attempt-level ceilings of person scores.

    python -m train.door_ceiling --model models/accessd-resnet.onnx \\
        --people train/checkpoints/resnet/state.json [--draws 40] [--json]

`train.door_eval` judges the shipped rule. This asks a different question:
given the model, is there a way of turning a face's pair scores into a
per-person score that would let in >= 97 % of genuine attempts and no one
else? Each draw enrols 20 people (first 3 photos, as door_eval does); every
enrolled person's next 5 photos are genuine attempts, one photo of every
other person is a stranger attempt. An attempt here is one aligned photo (a
held photo's frames are near copies of it, so a still photo is the attempt's
best case). A genuine attempt also counts as an impostor attempt against
every other enrolled person (the wrong-person chance).

For each person score, it reports the fraction of genuine attempts scoring
above the highest (and the 2nd, 4th, 11th highest) impostor attempt: the
best any threshold on that score could do at 0 (1, 3, 10) false grants.

Person scores (log-odds):
- `quorum`: the k-th best photo, k = 2 of 3 (what `accessd.decide` uses);
- `mean`: the mean of the person's photo scores;
- `template`: the score against the mean of the person's photo embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from accessd.model import ALWAYS, SiameseModel
from train.door_eval import people_test_parser, read_people
from train.faces import prepare_towers
from train.train import DEFAULT_DETECTOR

Scores = npt.NDArray[np.float64]


def log_odds(p: npt.NDArray[np.floating[Any]]) -> Scores:
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.asarray(np.log(q / (1 - q)), np.float64)


def person_scores(pair: npt.NDArray[np.floating[Any]], template: npt.NDArray[np.floating[Any]],
                  person_of: npt.NDArray[np.int64], n: int, k: int) -> dict[str, Scores]:
    """Attempts x people, per rule, from attempts x photos pair scores and attempts x people template scores."""
    lo = log_odds(pair)
    quorum = np.stack([np.sort(lo[:, person_of == i], axis=1)[:, ::-1][:, k - 1] for i in range(n)], axis=1)
    mean = log_odds(np.stack([pair[:, person_of == i].mean(axis=1) for i in range(n)], axis=1))
    return {"quorum": quorum, "mean": mean, "template": log_odds(template)}


def ceilings(genuine: Scores, impostor: Scores, at: tuple[int, ...] = (0, 1, 3, 10)) -> dict[str, float]:
    worst = np.sort(impostor)[::-1]
    return {f"tar_at_{i}_false": float(np.mean(genuine > worst[i])) for i in at if i < len(worst)}


def main(argv: list[str] | None = None) -> int:
    p = people_test_parser(__doc__)
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--draws", type=int, default=40)
    p.add_argument("--enrol", type=int, default=3)
    p.add_argument("--probes", type=int, default=5)
    p.add_argument("--gallery-people", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    model = SiameseModel(args.model)
    # One face set per tower, the photos every tower's crop found.
    sets = prepare_towers(args.data, DEFAULT_DETECTOR, model.contract.crops, args.cache_dir,
                          only_people=read_people(args.people))
    faces = sets[0]
    crops = tuple(s.crops for s in sets)
    embedded = model.embed(crops)
    photos: dict[str, list[int]] = {}
    for i, q in enumerate(faces.people):
        photos.setdefault(q, []).append(i)
    eligible = sorted(q for q in photos if len(photos[q]) > args.enrol)
    k = min(2, args.enrol)
    rng = np.random.default_rng(args.seed)
    genuine: dict[str, list[float]] = {}
    impostor: dict[str, list[float]] = {}
    for _ in range(args.draws):
        enrolled = sorted(rng.choice(eligible, min(args.gallery_people, len(eligible)), replace=False).tolist())
        n = len(enrolled)
        gallery = np.stack([embedded[i] for q in enrolled for i in photos[q][: args.enrol]])
        person_of = np.repeat(np.arange(n), args.enrol)
        templates = np.stack([gallery[person_of == j].mean(axis=0) for j in range(n)])
        who = [j for j, q in enumerate(enrolled) for _ in photos[q][args.enrol : args.enrol + args.probes]]
        probe = [i for q in enrolled for i in photos[q][args.enrol : args.enrol + args.probes]]
        strangers = [photos[q][0] for q in photos if q not in enrolled]
        _, s = model.embed_and_score(tuple(c[probe + strangers] for c in crops), np.concatenate([gallery, templates]),
                                     gate=ALWAYS)
        rules = person_scores(s[:, : len(gallery)], s[:, len(gallery):], person_of, n, k)
        for name, m in rules.items():
            g = m[: len(probe)]
            right = g[np.arange(len(probe)), who]
            wrong = np.where(np.eye(n, dtype=bool)[who], -np.inf, g).max(axis=1)
            genuine.setdefault(name, []).extend(right.tolist())
            impostor.setdefault(name, []).extend([*wrong.tolist(), *m[len(probe):].max(axis=1).tolist()])
    report = {
        "model": str(args.model), "people_from": str(args.people), "draws": args.draws,
        "genuine_attempts": len(genuine["quorum"]), "impostor_attempts": len(impostor["quorum"]),
        "rules": {name: ceilings(np.array(genuine[name]), np.array(impostor[name])) for name in genuine},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['genuine_attempts']} genuine and {report['impostor_attempts']} impostor attempts "
          f"(strangers and wrong-person chances), {args.draws} draws of {args.gallery_people} people "
          f"enrolled with {args.enrol} photos")
    print("rule      genuine above the highest impostor / 2nd / 4th / 11th")
    for name, c in report["rules"].items():
        print(f"{name:9s} " + "  ".join(f"{v:6.1%}" for v in c.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
