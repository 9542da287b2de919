"""Train the `resnet` Siamese model from dlib's weights: the head first, then the top stages.

    python -m train.import_dlib --out runs/resnet-dlib
    python -m train.finetune --init runs/resnet-dlib/checkpoint.keras --out runs/resnet \\
        --eval-pairs ../shared/data/lfw-protocol/pairsDevTest.txt --exclude-eval-people

Stage `head`: the twin frozen, the sigmoid head on |a - b| learns same/different
from every positive pair of the training people and as many negatives, half of
them the nearest other person of each photo (hard negatives).
Stage `top`: the last `--train-stages` ResNet stages and the 128-d projection
are unfrozen at a low learning rate, the head with them, on balanced pairs with
hard negatives mined again each epoch. The frozen lower stages are run once per
photo (and its mirror image, the augmentation) and cached, so an epoch costs
only the top of the network: minutes on a CPU.

Every stage is measured on people held out of training (never on pairsDevTest)
and the run keeps the checkpoint that measures best there: TAR at FAR 1e-3, then
AUC. `state.json` records both stages' numbers. The door threshold is chosen on
the same held-out people: the lowest pair score that no more than 1 in 10,000
of their stranger pairs reaches (`door_threshold`), so a door errs towards deny.
Checkpoints are written after every stage and epoch; `--resume` continues.
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
import numpy.typing as npt

log = logging.getLogger("finetune")

DOOR_FAR = 1e-4
PAIRS_PER_PERSON = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", type=Path, required=True, help="checkpoint from train.import_dlib")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=shared / "data/lfw")
    p.add_argument("--eval-pairs", type=Path)
    p.add_argument("--exclude-eval-people", action="store_true")
    p.add_argument("--max-people", type=int, default=0, help="use only the first N people (smoke tests)")
    p.add_argument("--head-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs of the top stages (0: head only)")
    p.add_argument("--train-stages", type=int, default=2, help="how many of the last ResNet stages to fine-tune")
    p.add_argument("--pairs-per-epoch", type=int, default=12000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-6)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--revalidate", action="store_true",
                   help="only measure the kept checkpoint again on the held-out people (after a serving change)")
    p.add_argument("--detector-model", type=Path,
                   default=Path("models/detector/face_detection_full_range_sparse.tflite"))
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def cut_layer(train_stages: int) -> str:
    """Name of the layer whose output feeds the first fine-tuned stage."""
    from train.model import RESNET_STAGES

    first = len(RESNET_STAGES) - train_stages
    if first <= 0:
        return "stem_pool"
    return f"stage{first - 1}_block{RESNET_STAGES[first - 1][1] - 1}_relu"


def split_at(embed: Any, cut: str) -> tuple[Any, Any]:
    """The embedding network as bottom (image -> cut) and top (cut -> embedding), sharing layers."""
    import keras

    cut_out = embed.get_layer(cut).output
    return keras.Model(embed.input, cut_out, name="bottom"), keras.Model(cut_out, embed.output, name="top")


def served(embed: Any, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Embeddings as the daemon computes them (with the mirror-image average where the architecture has it)."""
    from train.data import normalise

    return served_from(embed, [normalise(c, "resnet") for c in (crops, crops[:, :, ::-1])])


def served_from(model: Any, inputs: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """`inputs` are the photos and their mirror images, as the model takes them."""
    from train.model import ARCHITECTURES

    if not ARCHITECTURES["resnet"].test_time_flip:
        return predict(model, inputs[0])
    return (predict(model, inputs[0]) + predict(model, inputs[1])) / 2.0


def predict(model: Any, x: npt.NDArray[np.float32], batch: int = 128) -> npt.NDArray[np.float32]:
    out = [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32)


def nearest_impostors(emb: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int = 2) -> npt.NDArray[np.int64]:
    """For each photo, its k nearest photos of other people: the negatives a door gets wrong first."""
    out = []
    sq = (emb**2).sum(1)
    for i in range(0, len(emb), 1024):
        d = sq[i : i + 1024, None] + sq[None] - 2 * emb[i : i + 1024] @ emb.T
        d[labels[i : i + 1024, None] == labels[None]] = np.inf
        idx = np.argpartition(d, k, axis=1)[:, :k]
        rows = np.arange(i, i + len(idx))
        out += [np.stack([rows, idx[:, j]], 1) for j in range(k)]
    return np.concatenate(out).astype(np.int64)


def balanced_positives(labels: npt.NDArray[np.int64], per_person: int,
                       rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Up to `per_person` same-person pairs of everyone with two photos or more.

    Not every pair: LFW's few prolific people (530 photos of one) would supply
    most of them, and the model would learn those faces rather than faces.
    """
    pairs = []
    for person in np.unique(labels):
        idx = np.where(labels == person)[0]
        if len(idx) >= 2:
            a, b = np.triu_indices(len(idx), 1)
            pick = rng.permutation(len(a))[:per_person]
            pairs.append(np.stack([idx[a[pick]], idx[b[pick]]], 1))
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)


def negatives(emb: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], n: int,
              rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """n different-person pairs: half each photo's nearest other people (hard), half at random."""
    hard = nearest_impostors(emb, labels)
    hard = hard[rng.choice(len(hard), min(n // 2, len(hard)), replace=False)]
    rand = rng.integers(0, len(emb), size=(n * 2, 2))
    rand = rand[labels[rand[:, 0]] != labels[rand[:, 1]]][: n - len(hard)]
    return np.concatenate([hard, rand])


def head_scores(w: npt.NDArray[np.float32], b: float, ea: Any, eb: Any) -> npt.NDArray[np.float64]:
    logits = np.abs(ea - eb).astype(np.float64) @ w.astype(np.float64) + b
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def evaluate(emb: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], head: Any) -> dict[str, float]:
    """Every pair of the held-out people: accuracy, AUC, TAR at FAR 1e-2/1e-3/1e-4, the door threshold."""
    from train.metrics import auc, eer, roc, tar_at_far, threshold_at_far

    kernel, bias = head.get_weights()
    a, b = np.triu_indices(len(emb), 1)
    scores = head_scores(kernel[:, 0], float(bias[0]), emb[a], emb[b])
    same = labels[a] == labels[b]
    r = roc(scores, same)
    # Most accurate on a list with as many same as different pairs (LFW's protocol):
    # every pair of 238 people is 80 times more often different than same.
    best = int(np.argmax(r.tar - r.far))
    t = float(min(r.thresholds[best], 1.0))
    return {
        "val_pairs": len(scores),
        "val_genuine_pairs": int(same.sum()),
        "val_accuracy": float((r.tar[best] + 1.0 - r.far[best]) / 2.0),  # balanced
        "val_threshold": t,
        "val_auc": float(auc(r)),
        "val_eer": float(eer(r)),
        "val_tar_at_far_1e-2": tar_at_far(r, 1e-2),
        "val_tar_at_far_1e-3": tar_at_far(r, 1e-3),
        "val_tar_at_far_1e-4": tar_at_far(r, 1e-4),
        "val_threshold_far_1e-2": threshold_at_far(r, 1e-2),
        "val_threshold_far_1e-3": threshold_at_far(r, 1e-3),
        "door_threshold": threshold_at_far(r, DOOR_FAR),
    }


def better(new: dict[str, float], old: dict[str, float] | None) -> bool:
    if not old:
        return True
    return (new["val_tar_at_far_1e-3"], new["val_auc"]) > (old["val_tar_at_far_1e-3"], old["val_auc"])


def save(model: Any, out: Path, state: dict[str, Any], name: str = "checkpoint.keras") -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{name}.tmp.keras"
    model.save(tmp)
    tmp.replace(out / name)
    (out / "state.json").write_text(json.dumps(state, indent=2))


def train_head(model: Any, emb: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], epochs: int,
               seed: int) -> None:
    """Fit the head alone on |a - b| of frozen embeddings (binary cross-entropy, in TensorFlow)."""
    import keras

    from train.model import parts

    _, head = parts(model)
    rng = np.random.default_rng(seed)
    pos = balanced_positives(labels, PAIRS_PER_PERSON, rng)
    neg = negatives(emb, labels, len(pos), rng)
    pairs = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    x = np.abs(emb[pairs[:, 0]] - emb[pairs[:, 1]])
    log.info("head: %d positive, %d negative pairs (half of them hard)", len(pos), len(neg))
    inp = keras.Input((x.shape[1],))
    fit_model = keras.Model(inp, head(inp))
    head.trainable = True
    fit_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    fit_model.fit(x, y, batch_size=256, epochs=epochs, shuffle=True, verbose=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import keras
    import tensorflow as tf

    import train.model  # noqa: F401 - registers the custom layers
    from train.data import normalise
    from train.model import L1Distance, parts
    from train.train import load_training_faces, split_validation

    ns = argparse.Namespace(**vars(args), arch="resnet", teacher="none")
    faces = load_training_faces(ns)
    state_path = args.out / "state.json"
    resuming = (args.resume or args.revalidate) and state_path.is_file()
    state: dict[str, Any] = json.loads(state_path.read_text()) if resuming else {}
    train_faces, val_faces = split_validation(faces, 0.05, args.seed, state.get("validation_people"))
    if val_faces is None:
        raise SystemExit("too few people with two photos to hold some out")
    names = {p: i for i, p in enumerate(sorted(set(faces.people)))}
    y_train = np.asarray([names[p] for p in train_faces.people], np.int64)
    y_val = np.asarray([names[p] for p in val_faces.people], np.int64)
    log.info("training on %d photos of %d people; validating on %d photos of %d other people",
             len(train_faces), len(set(train_faces.people)), len(val_faces), len(set(val_faces.people)))

    last = args.out / "last.keras"
    if not (state.get("top_epochs") and not args.revalidate and last.is_file()):
        last = args.out / "checkpoint.keras"  # the kept one (a committed run keeps only that)
    model = keras.models.load_model(last if state else args.init, compile=False)
    embed, head = parts(model)
    state.setdefault("arch", "resnet")
    state.setdefault("validation_people", sorted(set(val_faces.people)))
    state.update({"data": str(args.data), "teacher": "none", "loss": "bce", "init": str(args.init),
                  "eval_pairs": str(args.eval_pairs) if args.eval_pairs else None,
                  "excluded_eval_people": bool(args.exclude_eval_people),
                  "train_photos": len(train_faces), "train_people": len(set(train_faces.people))})

    if args.revalidate:
        state["validation"] = evaluate(served(embed, val_faces.crops), y_val, head)
        state["best"] = {**state.get("best", {}), **state["validation"]}
        (args.out / "state.json").write_text(json.dumps(state, indent=2))
        log.info("kept checkpoint measured again: %s", json.dumps(state["validation"]))
        return 0
    bottom, top = split_at(embed, cut_layer(args.train_stages))
    t0 = time.monotonic()
    x_val = served(embed, val_faces.crops)
    if "imported" not in state:
        state["imported"] = evaluate(x_val, y_val, head)
        log.info("imported (dlib's twin and distance rule): %s", json.dumps(state["imported"]))

    if "head" not in state:
        log.info("stage head: embedding %d training photos with the frozen twin", len(train_faces))
        x_train = predict(embed, normalise(train_faces.crops, "resnet"))
        imported_head = head.get_weights()
        train_head(model, x_train, y_train, args.head_epochs, args.seed)
        state["head"] = evaluate(x_val, y_val, head)
        if better(state["head"], state["imported"]):
            state["validation"], state["stage"] = state["head"], "head"
        else:
            log.info("the trained head measures worse than dlib's rule on held-out people: keeping dlib's rule")
            head.set_weights(imported_head)
            state["validation"], state["stage"] = state["imported"], "imported"
        state["best"] = {**state["validation"], "stage": state["stage"], "epoch": 0}
        state["epoch"] = 0
        save(model, args.out, state)
        log.info("stage head (%.0f s): %s", time.monotonic() - t0, json.dumps(state["head"]))

    done = int(state.get("top_epochs", 0))
    if done >= args.epochs:
        return 0
    # The frozen bottom once per photo and per mirror image (the augmentation).
    log.info("stage top: caching the frozen bottom (%s) for %d photos and their mirrors",
             cut_layer(args.train_stages), len(train_faces))
    feats = np.stack([predict(bottom, normalise(train_faces.crops, "resnet")),
                      predict(bottom, normalise(train_faces.crops[:, :, ::-1], "resnet"))])
    val_feats = [predict(bottom, normalise(c, "resnet")) for c in (val_faces.crops, val_faces.crops[:, :, ::-1])]
    for layer in embed.layers:
        layer.trainable = False
    for layer in top.layers:
        layer.trainable = True
    head.trainable = True
    fa = keras.Input(feats.shape[2:], name="a")
    fb = keras.Input(feats.shape[2:], name="b")
    pair_model = keras.Model([fa, fb], head(L1Distance()(top(fa), top(fb))))
    pair_model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=1.0), loss="binary_crossentropy")
    best = state.get("best")
    rng = np.random.default_rng(args.seed + done)
    for epoch in range(done, args.epochs):
        t0 = time.monotonic()
        emb = predict(top, feats[0])
        n = args.pairs_per_epoch // 2
        pos = balanced_positives(y_train, PAIRS_PER_PERSON, rng)
        pos = pos[rng.choice(len(pos), n, replace=len(pos) < n)]
        pairs = np.concatenate([pos, negatives(emb, y_train, n, rng)])
        y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
        flip = rng.integers(0, 2, size=pairs.shape)
        order = rng.permutation(len(pairs))
        pairs, y, flip = pairs[order], y[order], flip[order]
        ds = tf.data.Dataset.from_tensor_slices(((feats[flip[:, 0], pairs[:, 0]], feats[flip[:, 1], pairs[:, 1]]), y))
        fit = pair_model.fit(ds.batch(args.batch_size), epochs=1, verbose=2)
        val = evaluate(served_from(top, val_feats), y_val, head)
        record = {"epoch": epoch + 1, "seconds": round(time.monotonic() - t0, 1),
                  "loss": float(fit.history["loss"][-1]), **val}
        log.info("stage top epoch %d: %s", epoch + 1, json.dumps(record))
        with (args.out / "history.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        state["top_epochs"] = epoch + 1
        state.setdefault("top", []).append(record)
        save(model, args.out, state, "last.keras")
        if better(val, best):
            best = {**val, "stage": "top", "epoch": epoch + 1}
            state["best"], state["validation"], state["stage"], state["epoch"] = best, val, "top", epoch + 1
            save(model, args.out, state)
            log.info("kept: epoch %d measures best on held-out people", epoch + 1)
        else:
            (args.out / "state.json").write_text(json.dumps(state, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
