"""Which crop the second tower (faceres) gets, measured on training people only.

    python -m train.faceres_crop [--photos 2000] [--margins 0.25 0.4 0.6 0.8]

Each candidate is a 224 px crop from MediaPipe's keypoints by the shared align
module (`landmarks`: the same similarity fit as the ResNet's chip, with more or
less padding around the face). For each, faceres embeds photos of LFW people
outside pairsDevTest and outside the ResNet's held-out validation people, and
every pair of them is scored by cosine: the miss rate at false-accept rates 1e-3
and 1e-4 is printed. The loosest crops look most like VGGFace2's (a detector box
with margin), but only the numbers decide.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

from accessd.align import CropSpec
from train.faces import prepare_faces
from train.metrics import roc, tar_at_far

DETECTOR = Path("models/detector/face_detection_full_range_sparse.tflite")


def training_people(lfw: Path, devtest: Path, state: Path) -> list[str]:
    """LFW people that neither DevTest nor the ResNet's held-out validation names."""
    from train.pairs import load_pairs

    excluded = set(load_pairs(devtest).people) | set(json.loads(state.read_text())["validation_people"])
    return [p.name for p in sorted(lfw.iterdir()) if p.is_dir() and p.name not in excluded]


def all_pairs_misses(emb: np.ndarray, people: list[str], fars: tuple[float, ...]) -> dict[str, float]:
    labels = np.unique(people, return_inverse=True)[1]
    sims = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    same = labels[iu[0]] == labels[iu[1]]
    r = roc(sims[iu].astype(np.float64), same)
    return {f"miss_at_far_{f:g}": round(1.0 - tar_at_far(r, f), 4) for f in fars} | {
        "genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum())}


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lfw", type=Path, default=shared / "lfw")
    p.add_argument("--devtest", type=Path, default=shared / "lfw-protocol/pairsDevTest.txt")
    p.add_argument("--state", type=Path, default=Path("train/checkpoints/resnet/state.json"))
    p.add_argument("--model", type=Path, default=Path("runs/faceres/faceres.keras"))
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--margins", type=float, nargs="+", default=[0.25, 0.4, 0.6, 0.8])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import keras

    from train.import_faceres import INPUT_SIZE, preprocess

    people = training_people(args.lfw, args.devtest, args.state)
    counts = {q: len(list((args.lfw / q).iterdir())) for q in people}
    # People with several photos, in name order, until the photo budget is spent.
    chosen, total = [], 0
    for q in people:
        if counts[q] >= 2 and total < args.photos:
            chosen.append(q)
            total += counts[q]
    model = keras.models.load_model(args.model, compile=False)
    for margin in args.margins:
        faces = prepare_faces(args.lfw, DETECTOR, CropSpec(INPUT_SIZE, margin, "landmarks"), Path("cache"),
                              only_people=chosen)
        emb = model.predict(preprocess(faces.crops), batch_size=64, verbose=0)
        print(json.dumps({"margin": margin, "photos": len(faces), "people": len(set(faces.people)),
                          **all_pairs_misses(emb, faces.people, (1e-3, 1e-4))}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
