"""Fine-tune faceres' last block on LFW's training people, inside the fused score.

    python -m train.finetune_faceres [--out runs/faceres-ft] [--epochs 6] [--cut conv_pw_12_relu]
    python -m train.finetune_faceres --resume-epoch 3 --epochs 6   # epochs 4-6 of a run stopped at 3

The fused head (`train.fusion`) scores a pair sigmoid(a * logit1 + b * cos2 + c) with both
towers frozen. Here the second tower's layers above `--cut` learn, with the ResNet and the
fusion weights held fixed, on the training people only (LFW minus pairsDevTest's people minus the
ResNet's held-out validation people): every epoch, the genuine pairs (at most 10 a person) and as
many strangers, half of them each photo's two nearest other people by the fused score with the
tower as it is now (the look-alikes a door lets in), half at random. Photos are mirrored at random.
The frozen bottom runs once per photo and is kept on disk (float16). Each epoch is measured on the held-out
people (every pair, fused miss rate at FAR 1e-4, then 1e-3); the best epoch is kept and only then
measured on DevTest, which chooses nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from train.finetune import balanced_positives, split_at
from train.fusion import DETECTOR, FACERES_CROP, add_inputs, embed_lfw, misses, split_people, tower1_logits

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


def hardest_strangers(fused: Array, labels: Array, k: int) -> Array:
    """(i, j) pairs: each photo's k highest-scoring photos of other people."""
    out = []
    for i in range(0, len(labels), 1024):
        block = fused[i:i + 1024].copy()
        block[labels[i:i + 1024, None] == labels[None]] = -np.inf
        top = np.argpartition(-block, k, axis=1)[:, :k]
        rows = np.arange(i, i + len(top))
        out += [np.stack([rows, top[:, j]], 1) for j in range(k)]
    return np.concatenate(out)


def embed_top(top: Any, feats: Array, batch: int = 256) -> Array:
    out = [np.asarray(top(feats[k:k + batch].astype(np.float32), training=False)) for k in range(0, len(feats), batch)]
    return np.concatenate(out).astype(np.float32)


def fused_misses(l1: Array, e2: Array, labels: Array, fusion: tuple[float, float, float]) -> dict[str, Any]:
    a, b, c = fusion
    iu = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None])[iu]
    cos2 = e2 @ e2.T
    return {"fused": misses((a * l1 + b * cos2 + c)[iu], same), "faceres": misses(cos2[iu], same)}


def rank(held: dict[str, Any], epoch: int) -> tuple[float, float, int]:
    """How epochs compare (lowest kept): the held-out fused miss at FAR 1e-4, then 1e-3, then the earlier."""
    return held["fused"]["0.0001"], held["fused"]["0.001"], epoch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_inputs(p)
    p.add_argument("--fusion", type=Path, default=Path("train/checkpoints/fused/fusion-before-ft.json"),
                   help="the fusion weights held fixed while tuning (the head fitted to faceres as imported)")
    p.add_argument("--out", type=Path, default=Path("runs/faceres-ft"))
    p.add_argument("--cut", default="conv_pw_12_relu", help="the last frozen layer")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--pairs-per-epoch", type=int, default=16000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume-epoch", type=int,
                   help="go on from <out>/top-N.weights.h5 and <out>/history.json (Adam's moments start afresh)")
    p.add_argument("--write-epoch", type=int,
                   help="only write the tower from <out>/top-N.weights.h5 (a run stopped early, or the committed one)")
    p.add_argument("--tower-out", type=Path, help="where the whole fine-tuned tower goes (default <out>/faceres.keras)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import keras
    import tensorflow as tf

    import train.model  # noqa: F401 - registers the custom layers
    from train.faces import prepare_faces
    from train.import_faceres import preprocess
    from train.model import parts

    keras.utils.set_random_seed(args.seed)
    tower_out = args.tower_out or args.out / "faceres.keras"
    if args.write_epoch is not None:
        model2 = keras.models.load_model(args.faceres, compile=False)
        split_at(model2, args.cut)[1].load_weights(args.out / f"top-{args.write_epoch}.weights.h5")
        tower_out.parent.mkdir(parents=True, exist_ok=True)
        model2.save(tower_out)
        record_file = args.out / "history.json"
        if record_file.is_file() and tower_out.parent.resolve() != args.out.resolve():
            # export/to_onnx.py records the fine-tuning in the contract from the history beside the tower.
            (tower_out.parent / "history.json").write_text(record_file.read_text())
        log.info("wrote %s (epoch %d)", tower_out, args.write_epoch)
        return 0
    paths, people, e1, _ = embed_lfw(args.lfw, args.resnet, None, Path("cache"))
    fz = json.loads(args.fusion.read_text())["fusion"]
    fusion = (float(fz["a"]), float(fz["b"]), float(fz["c"]))
    _, head = parts(keras.models.load_model(args.resnet, compile=False))
    kernel, bias = head.get_weights()
    w, b = kernel[:, 0].astype(np.float32), float(bias[0])
    names = np.array(people)
    labels = np.unique(names, return_inverse=True)[1]
    idx = {k: np.where(m)[0] for k, m in split_people(names, args.devtest, args.resnet).items()}

    faces = prepare_faces(args.lfw, DETECTOR, FACERES_CROP, Path("cache"))
    where = faces.index()
    crops = faces.crops[[where[q] for q in paths]]
    model2 = keras.models.load_model(args.faceres, compile=False)
    bottom, top = split_at(model2, args.cut)
    t0 = time.monotonic()

    def bottom_of(x: Array) -> Array:
        return np.concatenate([np.asarray(bottom(preprocess(x[k:k + 128]), training=False)).astype(np.float16)
                               for k in range(0, len(x), 128)])

    # The bottom costs 15-25 minutes of a 2-core CPU: kept beside the run, keyed by cut and photos.
    kept = args.out / f"bottom-{args.cut}-{len(paths)}.npz"
    if kept.is_file():
        with np.load(kept) as d:
            feats, mirror = {k: d[k] for k in idx}, d["mirror"]
    else:
        feats = {k: bottom_of(crops[i]) for k, i in idx.items()}
        mirror = bottom_of(crops[idx["train"]][:, :, ::-1])
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(kept, mirror=mirror, **feats)
    log.info("frozen bottom of %d photos (and %d mirrors) in %.0f s", len(crops), len(mirror), time.monotonic() - t0)
    # The tower's plain embedding: tuning and its measurements see no mirror-image mean (the
    # door's embedding, train.import_faceres.embed_for_serving, which train.fusion refits with).
    plain = np.asarray(model2(preprocess(crops[idx["validation"][:64]]), training=False))
    check = float(np.abs(embed_top(top, feats["validation"][:64]) - plain).max())
    log.info("top(bottom) against the whole tower: max |diff| %.2g (float16 features)", check)

    l1 = {k: tower1_logits(e1[i], e1[i], w, b) for k, i in idx.items()}
    y_train = labels[idx["train"]]
    a, bb, c = fusion
    for layer in model2.layers:
        layer.trainable = False
    for layer in top.layers:
        layer.trainable = True
    opt = keras.optimizers.Adam(args.lr, clipnorm=1.0)

    @tf.function  # type: ignore[untyped-decorator]
    def step(fa: Any, fb: Any, pair_l1: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            cos = tf.reduce_sum(top(fa, training=True) * top(fb, training=True), axis=-1)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, a * pair_l1 + bb * cos + c))
        grads = tape.gradient(loss, top.trainable_variables)
        opt.apply_gradients(zip(grads, top.trainable_variables, strict=True))
        return loss

    args.out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    before = fused_misses(l1["validation"], embed_top(top, feats["validation"]), labels[idx["validation"]], fusion)
    log.info("epoch 0 (imported) held-out: %s", json.dumps(before))
    best = rank(before, 0)
    first = 1
    if args.resume_epoch is None:
        top.save_weights(args.out / "top-0.weights.h5")
        rng = np.random.default_rng(args.seed)
    else:
        history = [h for h in json.loads((args.out / "history.json").read_text())["history"]
                   if h["epoch"] <= args.resume_epoch]
        if len(history) != args.resume_epoch:
            raise SystemExit(f"{args.out / 'history.json'}: has no record of epochs 1..{args.resume_epoch}")
        for h in history:
            best = min(best, rank(h["validation"], h["epoch"]))
        top.load_weights(args.out / f"top-{args.resume_epoch}.weights.h5")
        first = args.resume_epoch + 1
        # A run resumed draws other pairs than one that never stopped; seeded by where it resumed.
        rng = np.random.default_rng([args.seed, args.resume_epoch])
        log.info("resumed after epoch %d (best so far: epoch %d)", args.resume_epoch, best[2])
    for epoch in range(first, args.epochs + 1):
        t0 = time.monotonic()
        emb = embed_top(top, feats["train"])
        fused_train = a * l1["train"] + bb * (emb @ emb.T) + c
        n = args.pairs_per_epoch // 2
        pos = balanced_positives(y_train, 10, rng)
        pos = pos[rng.choice(len(pos), n, replace=len(pos) < n)]
        hard = hardest_strangers(fused_train, y_train, 2)
        hard = hard[rng.choice(len(hard), n // 2, replace=False)]
        rand = rng.integers(0, len(y_train), size=(n * 2, 2))
        rand = rand[y_train[rand[:, 0]] != y_train[rand[:, 1]]][: n - len(hard)]
        pairs = np.concatenate([pos, hard, rand])
        y = np.r_[np.ones(len(pos)), np.zeros(len(hard) + len(rand))].astype(np.float32)
        order = rng.permutation(len(pairs))
        pairs, y = pairs[order], y[order]
        flip = rng.integers(0, 2, size=pairs.shape).astype(bool)
        losses = []
        for k in range(0, len(pairs), args.batch_size):
            pi, fl = pairs[k:k + args.batch_size], flip[k:k + args.batch_size]
            fa = np.where(fl[:, :1, None, None], mirror[pi[:, 0]], feats["train"][pi[:, 0]]).astype(np.float32)
            fb = np.where(fl[:, 1:, None, None], mirror[pi[:, 1]], feats["train"][pi[:, 1]]).astype(np.float32)
            pl = l1["train"][pi[:, 0], pi[:, 1]].astype(np.float32)
            losses.append(float(step(fa, fb, pl, y[k:k + args.batch_size])))
        held = fused_misses(l1["validation"], embed_top(top, feats["validation"]), labels[idx["validation"]], fusion)
        record: dict[str, Any] = {"epoch": epoch, "seconds": round(time.monotonic() - t0, 1),
                                  "loss": float(np.mean(losses)), "validation": held}
        if epoch == first and args.resume_epoch is not None:
            record["resumed"] = True
        history.append(record)
        log.info("epoch %d: %s", epoch, json.dumps(record))
        top.save_weights(args.out / f"top-{epoch}.weights.h5")
        best = min(best, rank(held, epoch))
        progress = {"cut": args.cut, "lr": args.lr, "pairs_per_epoch": args.pairs_per_epoch,
                    "batch_size": args.batch_size, "seed": args.seed, "kept_epoch": best[2],
                    "validation_imported": before, "history": history}
        (args.out / "history.json").write_text(json.dumps(progress, indent=2))
    keep = best[2]
    top.load_weights(args.out / f"top-{keep}.weights.h5")
    dev = fused_misses(l1["devtest"], embed_top(top, feats["devtest"]), labels[idx["devtest"]], fusion)
    model2.save(tower_out)  # the whole tower, the kept epoch's top: train.fusion and export take it
    top.load_weights(args.out / "top-0.weights.h5")
    dev0 = fused_misses(l1["devtest"], embed_top(top, feats["devtest"]), labels[idx["devtest"]], fusion)
    result = {"cut": args.cut, "lr": args.lr, "epochs": args.epochs, "pairs_per_epoch": args.pairs_per_epoch,
              "validation_imported": before, "history": history, "kept_epoch": keep,
              "devtest_imported": dev0, "devtest_kept": dev}
    (args.out / "finetune.json").write_text(json.dumps(result, indent=2))
    log.info("kept epoch %d; DevTest imported %s, kept %s", keep, json.dumps(dev0), json.dumps(dev))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
