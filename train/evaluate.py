"""Evaluate a Keras checkpoint or an exported ONNX model on an LFW pair list.

    python -m train.evaluate --model models/accessd-resnet.onnx \\
        --pairs ../shared/data/lfw-protocol/pairsDevTest.txt [--data ROOT] [--json] [--plots DIR]

Faces go through the daemon's detect -> align code. A photo where no face is
found is still scored, on a centred crop, so every pair of the list counts.
`accuracy` uses the model's most accurate threshold on people held out of
training (never chosen on this list); `door_*` use the daemon's deny-leaning
default threshold (1% false accepts on those people); `best_accuracy` is the
oracle threshold on this list, or for multi-fold lists (pairs.txt) the 10-fold
protocol: threshold picked on 9 folds, tested on the 10th.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from accessd.model import ALWAYS, stack
from train.metrics import (
    accuracy,
    auc,
    best_threshold,
    eer,
    kfold_accuracy,
    precision_recall_f1,
    roc,
    tar_at_far,
    threshold_at_far,
)
from train.pairs import PairList, load_pairs

if TYPE_CHECKING:
    from accessd.align import CropSpec

log = logging.getLogger("evaluate")


class Scorer:
    """Embeds crops and scores embedding pairs with either model format."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".onnx":
            from accessd.model import SiameseModel

            self.onnx = SiameseModel(path)
            self.crops = self.onnx.contract.crops
            self.threshold = float(self.onnx.contract.raw.get("balanced_threshold", 0.5))
            self.door_threshold = self.onnx.contract.detection_threshold
        else:
            import keras

            import train.model  # noqa: F401 - registers custom layers
            from accessd.align import CropSpec
            from train.model import ARCHITECTURES, arch_of

            self.keras = keras.models.load_model(path, compile=False)
            arch = ARCHITECTURES[arch_of(self.keras)]
            self.crops = (CropSpec(arch.input_size, arch.crop_margin, arch.alignment),)
            state = path.with_name("state.json")
            val = json.loads(state.read_text()).get("validation", {}) if state.is_file() else {}
            # As export/to_onnx.py writes them: the most accurate threshold on held-out
            # people, and the door's deny-leaning one (at most 1% false accepts there).
            self.threshold = float(val.get("val_threshold", 0.5))
            self.door_threshold = float(val.get("val_threshold_far_1e-2", self.threshold))

    def embed(self, crops: tuple[np.ndarray, ...]) -> np.ndarray:
        if hasattr(self, "onnx"):
            return self.onnx.embed(crops)
        from train.scoring import embed_numpy

        return embed_numpy(self.keras, crops[0])



def pair_crops(pairs: PairList, root: Path, specs: tuple[CropSpec, ...],
               cache_dir: Path) -> dict[str, tuple[np.ndarray, ...]]:
    """Each photo's crops, one per tower."""
    each = [_pair_crops(pairs, root, spec, cache_dir) for spec in specs]
    return {p: tuple(c[p] for c in each) for p in each[0]}


def _pair_crops(pairs: PairList, root: Path, spec: CropSpec, cache_dir: Path) -> dict[str, np.ndarray]:
    from accessd.align import crop_face, nearest_to_center
    from accessd.detector import FaceDetector
    from accessd.imageio import read_image
    from accessd.types import Face
    from train.faces import prepare_faces
    from train.train import DEFAULT_DETECTOR

    faces = prepare_faces(root, DEFAULT_DETECTOR, spec, cache_dir, only_people=pairs.people)
    crops = dict(zip(faces.paths, faces.crops, strict=True))
    missing = sorted({p for pair in pairs.pairs for p in (pair.a, pair.b)} - crops.keys())
    if missing:
        log.warning("%d photos without a detected face are scored on a centred crop", len(missing))
        with FaceDetector(DEFAULT_DETECTOR, 0.3) as det:
            for rel in missing:
                image = read_image(root / rel)
                h, w = image.shape[:2]
                face = nearest_to_center(det.detect(image), w, h) or Face(w * 0.3, h * 0.3, w * 0.4, h * 0.4, 0.0)
                crops[rel] = crop_face(image, face, spec)
    return crops


def score_pairs(scorer: Scorer, pairs: PairList, crops: dict[str, tuple[np.ndarray, ...]]) -> np.ndarray:
    photos = sorted(crops)
    index = {p: i for i, p in enumerate(photos)}
    emb = scorer.embed(stack([crops[p] for p in photos]))
    a = np.asarray([index[p.a] for p in pairs.pairs])
    b = np.asarray([index[p.b] for p in pairs.pairs])
    if hasattr(scorer, "onnx"):
        # The graph scores crops against a gallery; chunked diagonals give pair scores.
        out = np.empty(len(a))
        chunk = 64
        for i in range(0, len(a), chunk):
            crops_a = stack([crops[photos[j]] for j in a[i : i + chunk]])
            _, s = scorer.onnx.embed_and_score(crops_a, emb[b[i : i + chunk]], gate=ALWAYS)
            out[i : i + chunk] = np.diagonal(s)
        return out
    from train.scoring import pair_scores

    return pair_scores(scorer.keras, emb[a], emb[b])


def report(scores: np.ndarray, same: np.ndarray, folds: np.ndarray, threshold: float) -> dict[str, Any]:
    r = roc(scores, same)
    precision, recall, f1 = precision_recall_f1(scores, same, threshold)
    if len(np.unique(folds)) > 1:
        best_acc, best_std = kfold_accuracy(scores, same, folds)
        best_t = best_threshold(scores, same)
    else:
        best_t = best_threshold(scores, same)
        best_acc, best_std = accuracy(scores, same, best_t), 0.0
    return {
        "pairs": len(scores),
        "accuracy": accuracy(scores, same, threshold),
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "best_accuracy": best_acc,
        "best_accuracy_std": best_std,
        "best_threshold": best_t,
        "auc": auc(r),
        "eer": eer(r),
        "tar_at_far_1e-2": tar_at_far(r, 1e-2),
        "tar_at_far_1e-3": tar_at_far(r, 1e-3),
        "threshold_at_far_1e-2": threshold_at_far(r, 1e-2),
        "suggested_detection_threshold": threshold_at_far(r, 1e-2),
    }


def plot(scores: np.ndarray, same: np.ndarray, out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    r = roc(scores, same)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(r.far, r.tar, label=f"AUC {auc(r):.3f}")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    roc_path = out_dir / "roc.png"
    fig.savefig(roc_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[same], bins=bins, alpha=0.6, label="same person")
    ax.hist(scores[~same], bins=bins, alpha=0.6, label="different people")
    ax.set_xlabel("pair score")
    ax.set_ylabel("pairs")
    ax.set_title(f"Scores: {title}")
    ax.legend()
    hist_path = out_dir / "scores.png"
    fig.savefig(hist_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [roc_path, hist_path]


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared"))
    p = argparse.ArgumentParser(description="Evaluate a Siamese model on an LFW pair list.")
    p.add_argument("--model", type=Path, required=True, help="Keras checkpoint (.keras) or exported .onnx")
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--data", type=Path, default=shared / "data/lfw")
    p.add_argument("--threshold", type=float, help="override the model's own threshold")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", type=Path, help="folder for roc.png and scores.png (default: beside the model)")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--dump-scores", type=Path, help="save the per-pair scores (.npy), e.g. for parity checks")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    pairs = load_pairs(args.pairs)
    scorer = Scorer(args.model)
    crops = pair_crops(pairs, args.data, scorer.crops, args.cache_dir)
    scores = score_pairs(scorer, pairs, crops)
    if args.dump_scores:
        np.save(args.dump_scores, scores)
    same = np.asarray([p.same for p in pairs.pairs])
    folds = np.asarray([p.fold for p in pairs.pairs])
    threshold = args.threshold if args.threshold is not None else scorer.threshold
    result = {"model": str(args.model), "pairs_file": args.pairs.name, **report(scores, same, folds, threshold)}
    door_precision, door_recall, _ = precision_recall_f1(scores, same, scorer.door_threshold)
    result.update({
        "door_threshold": scorer.door_threshold,
        "door_accuracy": accuracy(scores, same, scorer.door_threshold),
        "door_precision": door_precision,
        "door_recall": door_recall,
    })
    plots = plot(scores, same, args.plots or args.model.parent / f"eval-{args.pairs.stem}", args.pairs.name)
    result["plots"] = [str(x) for x in plots]
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>32}: {v:.4f}" if isinstance(v, float) else f"{k:>32}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
