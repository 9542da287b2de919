"""Train the Siamese model on identity folders.

    python -m train.train --data ../shared/data/lfw --out runs/compact \\
        --eval-pairs ../shared/data/lfw-protocol/pairsDevTest.txt --exclude-eval-people \\
        --teacher dlib --epochs 30

Checkpoints go to OUT/checkpoint.keras every --checkpoint-every epochs and at
the end, with OUT/state.json; `--resume` continues from them. The training set
must not share a person with --eval-pairs: it refuses unless
--exclude-eval-people drops them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("train")

DEFAULT_DETECTOR = Path("models/detector/face_detection_full_range_sparse.tflite")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the accessd Siamese model.")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data/lfw",
                   help="identity folders <root>/<person>/*.jpg, or a seed layout with anchor/positive/negative")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    p.add_argument("--arch", default="compact", choices=["compact", "koch"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--pairs-per-epoch", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", type=float, default=0.9, help="learning rate factor per epoch")
    p.add_argument("--clipnorm", type=float, default=1.0)
    p.add_argument("--loss", choices=["bce", "contrastive"], default="bce")
    p.add_argument("--teacher", choices=["none", "dlib"], default="none",
                   help="distil dlib's face descriptor (train-time only; needs requirements-train.txt)")
    p.add_argument("--teacher-weight", type=float, default=1.0)
    p.add_argument("--hard-fraction", type=float, default=0.5, help="share of negatives drawn from mined hard ones")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--strategy", choices=["default", "mirrored"], default="default")
    p.add_argument("--eval-pairs", type=Path, help="pair list the model will be evaluated on")
    p.add_argument("--exclude-eval-people", action="store_true",
                   help="drop every person named in --eval-pairs from the training data")
    p.add_argument("--max-people", type=int, default=0, help="use only the first N people (smoke tests)")
    p.add_argument("--detector-model", type=Path, default=DEFAULT_DETECTOR)
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_training_faces(args: argparse.Namespace) -> Any:
    from accessd.align import CropSpec
    from train.data import check_disjoint
    from train.faces import prepare_faces
    from train.model import ARCHITECTURES
    from train.pairs import load_pairs
    from train.seed_layout import SEED_DIRS, is_seed_layout, relabel

    root: Path = args.data
    seed = is_seed_layout(root)
    people = list(SEED_DIRS) if seed else sorted(p.name for p in root.iterdir() if p.is_dir())
    if args.max_people:
        people = people[: args.max_people]
    if args.eval_pairs is not None:
        eval_people = load_pairs(args.eval_pairs).people
        if args.exclude_eval_people:
            people = [p for p in people if p not in eval_people]
        check_disjoint(people, eval_people, str(args.eval_pairs))
    arch = ARCHITECTURES[args.arch]
    faces = prepare_faces(
        root, args.detector_model, CropSpec(arch.input_size, arch.crop_margin, arch.alignment), args.cache_dir,
        teacher=args.teacher == "dlib", workers=args.workers, only_people=people,
    )
    return relabel(faces) if seed else faces


def split_validation(faces: Any, fraction: float, seed: int,
                     held_out: list[str] | None = None) -> tuple[Any, Any | None]:
    """Hold out whole people (never photos) for threshold selection and monitoring.

    `held_out` (from a checkpoint's state.json) keeps a resumed run's split.
    None when too few people have two photos (the seed layout has one person).
    """
    from collections import Counter

    if held_out is not None:
        keep = set(held_out)
        return (faces.subset([i for i, p in enumerate(faces.people) if p not in keep]),
                faces.subset([i for i, p in enumerate(faces.people) if p in keep]))
    counts = Counter(faces.people)
    # Validation pairs need positives: hold out people with two or more photos.
    multi = sorted(p for p, c in counts.items() if c >= 2)
    if len(multi) < 3:
        return faces, None
    rng = np.random.default_rng(seed)
    size = min(len(multi) - 1, max(2, int(len(counts) * fraction)))
    val_people = set(rng.choice(multi, size=size, replace=False).tolist())
    train_idx = [i for i, p in enumerate(faces.people) if p not in val_people]
    val_idx = [i for i, p in enumerate(faces.people) if p in val_people]
    return faces.subset(train_idx), faces.subset(val_idx)


def compile_model(model: Any, args: argparse.Namespace) -> None:
    import keras

    from train.model import contrastive_loss

    schedule = keras.optimizers.schedules.ExponentialDecay(
        args.lr, decay_steps=max(1, args.pairs_per_epoch // args.batch_size), decay_rate=args.lr_decay
    )
    losses: dict[str, Any] = {"score": "binary_crossentropy"}
    weights: dict[str, float] = {"score": 1.0}
    if args.loss == "contrastive":
        losses["distance"] = contrastive_loss()
        weights["distance"] = 1.0
    if args.teacher != "none":
        losses["emb_a"] = losses["emb_b"] = "mse"
        weights["emb_a"] = weights["emb_b"] = args.teacher_weight
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=args.clipnorm),
        loss=losses,
        loss_weights=weights,
        metrics={"score": [keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")]},
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import keras
    import tensorflow as tf

    from train.data import DisjointnessError, PairSampler, make_dataset
    from train.scoring import embed_numpy, pair_scores, validation_report

    try:
        faces = load_training_faces(args)
    except DisjointnessError as exc:
        log.error("%s", exc)
        return 2
    ckpt, state_path = args.out / "checkpoint.keras", args.out / "state.json"
    resuming = args.resume and ckpt.is_file()
    held_out = json.loads(state_path.read_text()).get("validation_people") if resuming else None
    train_faces, val_faces = split_validation(faces, 0.05, args.seed, held_out)
    if train_faces.teacher is not None:
        # Standardise the teacher's dimensions: raw dlib values vary by ~0.05, and
        # on that scale the student settles on the mean descriptor and stops.
        mean, std = train_faces.teacher.mean(0), train_faces.teacher.std(0) + 1e-6
        train_faces.teacher = (train_faces.teacher - mean) / std
    log.info("training on %d photos of %d people; validating on %d photos of %d other people",
             len(train_faces), len(set(train_faces.people)), len(val_faces or []),
             len(set(val_faces.people)) if val_faces else 0)

    args.out.mkdir(parents=True, exist_ok=True)
    strategy = tf.distribute.MirroredStrategy() if args.strategy == "mirrored" else tf.distribute.get_strategy()
    start_epoch = 0
    with strategy.scope():
        if resuming:
            model = keras.models.load_model(ckpt, custom_objects={"loss": None}, compile=False)
            compile_model(model, args)
            state = json.loads(state_path.read_text())
            start_epoch = int(state["epoch"])
            model.optimizer.build(model.trainable_variables)
            _restore_optimizer(model, args.out)
            log.info("resumed from %s at epoch %d", ckpt, start_epoch)
        else:
            from train.model import build_siamese

            keras.utils.set_random_seed(args.seed)
            model = build_siamese(args.arch)
            compile_model(model, args)

    sampler = PairSampler(train_faces, seed=args.seed + start_epoch)
    if val_faces is not None:
        val_pairs, val_labels = PairSampler(val_faces, seed=1234).epoch(2000, hard_fraction=0.0)
    crops = tf.constant(train_faces.crops)
    history = args.out / "history.jsonl"
    for epoch in range(start_epoch, args.epochs):
        t0 = time.monotonic()
        if epoch > start_epoch or start_epoch > 0:
            emb = embed_numpy(model, train_faces.crops)
            hard_wrong = sampler.mine(lambda pairs, e=emb: pair_scores(model, e[pairs[:, 0]], e[pairs[:, 1]]))
            log.info("mined %d hard negatives (%.0f%% scored as matches)", len(sampler.hard), 100 * hard_wrong)
        pairs, labels = sampler.epoch(args.pairs_per_epoch, args.hard_fraction)
        ds = make_dataset(train_faces, pairs, labels, args.batch_size, augment=True, crops_tensor=crops,
                          seed=args.seed + epoch)
        fit = model.fit(ds, epochs=epoch + 1, initial_epoch=epoch, verbose=1 if os.isatty(1) else 2)
        val = validation_report(model, val_faces, val_pairs, val_labels) if val_faces is not None else {}
        record = {"epoch": epoch + 1, "seconds": round(time.monotonic() - t0, 1),
                  **{k: float(v[-1]) for k, v in fit.history.items()}, **val}
        log.info("epoch %d: %s", epoch + 1, json.dumps(record))
        with history.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if (epoch + 1) % args.checkpoint_every == 0 or epoch + 1 == args.epochs:
            _save(model, args, epoch + 1, val, sorted(set(val_faces.people)) if val_faces else [])
    return 0


def _save(model: Any, args: argparse.Namespace, epoch: int, val: dict[str, float], val_people: list[str]) -> None:
    ckpt = args.out / "checkpoint.keras"
    tmp = args.out / "checkpoint.tmp.keras"
    model.save(tmp)
    tmp.replace(ckpt)
    np.savez(args.out / "optimizer.npz", *[v.numpy() for v in model.optimizer.variables])
    state = {"epoch": epoch, "arch": args.arch, "validation": val, "data": str(args.data),
             "teacher": args.teacher, "loss": args.loss,
             "eval_pairs": str(args.eval_pairs) if args.eval_pairs else None,
             "excluded_eval_people": bool(args.exclude_eval_people),
             "validation_people": val_people}
    (args.out / "state.json").write_text(json.dumps(state, indent=2))
    log.info("checkpoint at epoch %d -> %s", epoch, ckpt)


def _restore_optimizer(model: Any, out: Path) -> None:
    """Adam's moments and step count, so a resumed run continues rather than restarts."""
    path = out / "optimizer.npz"
    if not path.is_file():
        return
    with np.load(path) as data:
        values = [data[f"arr_{i}"] for i in range(len(data.files))]
    variables = model.optimizer.variables
    if len(values) != len(variables):
        log.warning("optimizer state in %s does not match the model; starting it fresh", path)
        return
    for var, value in zip(variables, values, strict=True):
        var.assign(value)


if __name__ == "__main__":
    raise SystemExit(main())
