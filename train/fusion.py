"""The fusion head: the ResNet's pair score and faceres' cosine into one score, trained in TensorFlow.

    python -m train.fusion [--out runs/fused]

Both towers stay frozen while the head is fitted (faceres may come fine-tuned by train.finetune_faceres). Every LFW
photo is cut for each tower by the shared align module and embedded once; people
are split three ways:
- pairsDevTest's people: never trained on, never used to choose anything; reported only;
- the ResNet's held-out validation people (its `state.json`): choose thresholds, report;
- everyone else: the head is trained on their pairs: every genuine pair (at most
  `--per-person` photos a person) and hard negatives (each photo's nearest strangers by
  either tower) plus as many random strangers.
The head is logistic: score = sigmoid(a * logit1 + b * cos2 + c), logit1 the ResNet's
own head logit (weighted L1 distance), cos2 faceres' cosine. Three numbers, so it
cannot memorise the training people. Written to `<out>/fusion.json` with the
all-pairs miss rates at FAR 1e-3 .. 1e-6 of each tower and of the fusion, on the
validation people and on DevTest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from accessd.align import CropSpec
from accessd.provision import sha256_file
from train.faces import prepare_towers
from train.metrics import roc, tar_at_far

log = logging.getLogger(__name__)

# Chosen by train.faceres_crop on training people: the ResNet's chip fit with more padding.
FACERES_CROP = CropSpec(224, 0.4, "landmarks")
DETECTOR = Path("models/detector/face_detection_full_range_sparse.tflite")
FARS = (1e-3, 1e-4, 1e-5, 1e-6)

Array = npt.NDArray[Any]


def embed_lfw(lfw: Path, resnet_ckpt: Path, faceres: Path | None,
              cache: Path) -> tuple[list[str], list[str], Array, Array | None]:
    """Paths, people, ResNet embeddings and faceres embeddings (None when `faceres` is None) of
    every LFW photo both crops found.

    Each tower's embeddings are cached on their own (`cache_files`), so a new faceres re-embeds
    faceres only and the ResNet alone (train.finetune_faceres) never waits for faceres."""
    saved1, saved2 = cache_files(cache, resnet_ckpt, faceres)
    e1 = e2 = None
    paths: list[str] | None = None
    if saved1.is_file():
        with np.load(saved1) as d:
            paths, e1 = d["paths"].tolist(), d["e"]
    if saved2 is not None and saved2.is_file():
        with np.load(saved2) as d:
            if paths is None or d["paths"].tolist() == paths:
                paths, e2 = d["paths"].tolist(), d["e"]
    if e1 is None or (saved2 is not None and e2 is None):
        paths, e1, e2 = _embed_towers(lfw, resnet_ckpt, faceres, paths, e1, e2, cache)
        np.savez(saved1, paths=np.array(paths), e=e1)
        if saved2 is not None:
            np.savez(saved2, paths=np.array(paths), e=e2)
    assert paths is not None and e1 is not None
    return paths, [q.split("/")[0] for q in paths], e1, e2


def cache_files(cache: Path, resnet_ckpt: Path, faceres: Path | None) -> tuple[Path, Path | None]:
    """Where each tower's LFW embeddings are cached, keyed by that tower's bytes (a fine-tuned
    tower has the same file size as the one it came from) and crop. "mirror": faceres' embedding
    is the mean of the crop's and its mirror image's (caches made before that hold the crop's
    alone and must not be read as these)."""
    def named(tower: str, stamp: str) -> Path:
        return cache / f"embeddings-{tower}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}.npz"

    first = named("resnet", f"{sha256_file(resnet_ckpt)}|{_resnet_crop()}")
    return first, None if faceres is None else named("faceres", f"{sha256_file(faceres)}|{FACERES_CROP}|mirror")


def _resnet_crop() -> CropSpec:
    from train.model import ARCHITECTURES

    arch = ARCHITECTURES["resnet"]
    return CropSpec(arch.input_size, arch.crop_margin, arch.alignment)


def _embed_towers(lfw: Path, resnet_ckpt: Path, faceres: Path | None, cached_paths: list[str] | None,
                  e1: Array | None, e2: Array | None, cache: Path) -> tuple[list[str], Array, Array | None]:
    """Embed with the towers whose embeddings are None. Both crops are cut either way, so both
    towers' caches hold the same photos in the same order; a cached tower's embeddings made for
    another list of photos (`cached_paths`) are embedded again, never paired with the wrong photo."""
    import keras

    import train.model  # noqa: F401 - registers the custom layers
    from train.data import normalise
    from train.import_faceres import embed_crops
    from train.model import embed_for_serving, parts

    one, two = prepare_towers(lfw, DETECTOR, [_resnet_crop(), FACERES_CROP], cache)
    order = sorted(range(len(one)), key=one.paths.__getitem__)  # by path, as the cached runs were
    one, two = one.subset(order), two.subset(order)
    paths = list(one.paths)
    if paths != cached_paths:
        e1 = e2 = None
    if e1 is None:
        embed, _ = parts(keras.models.load_model(resnet_ckpt, compile=False))
        e1 = np.concatenate([
            np.asarray(embed_for_serving(embed, normalise(one.crops[k:k + 256], "resnet")))
            for k in range(0, len(paths), 256)])
    if faceres is not None and e2 is None:
        e2 = embed_crops(keras.models.load_model(faceres, compile=False), two.crops)
    return paths, e1, e2


def tower1_logits(e1a: Array, e1b: Array, w: Array, b: float, chunk: int = 64) -> Array:
    """len(a) x len(b) ResNet head logits: w . |a - b| + b."""
    out = np.empty((len(e1a), len(e1b)), np.float32)
    for k in range(0, len(e1a), chunk):
        out[k:k + chunk] = np.abs(e1a[k:k + chunk, None, :] - e1b[None]) @ w + b
    return out


def all_pairs(s: Array, labels: Array) -> tuple[Array, Array]:
    iu = np.triu_indices(len(labels), 1)
    return s[iu], labels[iu[0]] == labels[iu[1]]


def misses(scores: Array, same: Array) -> dict[str, float]:
    r = roc(scores.astype(np.float64), same)
    return {f"{f:g}": round(1.0 - tar_at_far(r, f), 4) for f in FARS}


def training_pairs(l1: Array, c2: Array, labels: Array, per_person: int, hard: int,
                   rng: np.random.Generator) -> tuple[Array, Array, Array]:
    """(i, j, same) for the head: capped genuine pairs, each photo's hardest strangers, random strangers."""
    by_person: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_person.setdefault(int(lab), []).append(i)
    pos = []
    for idx in by_person.values():
        keep = idx if len(idx) <= per_person else list(rng.choice(idx, per_person, replace=False))
        pos += [(a, b) for n, a in enumerate(keep) for b in keep[n + 1:]]
    other = labels[:, None] != labels[None, :]
    neg = set()
    for s in (l1, c2):
        masked = np.where(other, s, -np.inf)
        top = np.argpartition(-masked, hard, axis=1)[:, :hard]
        neg |= {(min(i, int(j)), max(i, int(j))) for i in range(len(labels)) for j in top[i]}
    while len(neg) < 2 * len(pos):
        i, j = rng.integers(0, len(labels), 2)
        if labels[i] != labels[j]:
            neg.add((min(int(i), int(j)), max(int(i), int(j))))
    pairs = np.array(pos + sorted(neg), np.int64)
    same = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.float32)
    return pairs[:, 0], pairs[:, 1], same


def fit_head(x: Array, y: Array, seed: int, epochs: int = 40) -> tuple[float, float, float]:
    """Logistic regression on (logit1, cos2), in Keras; classes weighted equally."""
    import keras

    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid", name="fusion")])
    head.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    pos = float(y.mean())
    weights = np.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos)).astype(np.float32)
    head.fit(x, y, sample_weight=weights, batch_size=4096, epochs=epochs, verbose=0, shuffle=True)
    kernel, bias = head.get_layer("fusion").get_weights()
    return float(kernel[0, 0]), float(kernel[1, 0]), float(bias[0])


GATE_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5 .. 0.95


def gates(logit1: Array, fused_logit: Array) -> dict[str, float]:
    """Per fused threshold: the ResNet score (probability) below which only 0.1 % of the genuine
    pairs the fused score accepts lie. The cascade's gate (export takes the lower of this and
    the score below which no face can be accepted at all)."""
    out = {}
    for thr in GATE_THRESHOLDS:
        kept = logit1[fused_logit > np.log(thr / (1 - thr))]
        out[f"{thr:.2f}"] = float(1.0 / (1.0 + np.exp(-np.quantile(kept, 0.001))))
    return out


def report(name: str, e1: Array, e2: Array, labels: Array, w: Array, b: float,
           fusion: tuple[float, float, float]) -> dict[str, Any]:
    l1 = tower1_logits(e1, e1, w, b)
    c2 = e2 @ e2.T
    s1, same = all_pairs(l1, labels)
    s2, _ = all_pairs(c2, labels)
    a, bb, c = fusion
    fused_logit = a * s1 + bb * s2 + c
    r = roc(fused_logit.astype(np.float64), same)
    best = int(np.argmax(r.tar - r.far))  # most accurate with as many same as different pairs
    out = {"photos": len(labels), "genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum()),
           "miss_at_far": {"resnet": misses(s1, same), "faceres": misses(s2, same),
                           "fused": misses(fused_logit, same)},
           "balanced_threshold": float(1.0 / (1.0 + np.exp(-min(float(r.thresholds[best]), 30.0)))),
           "balanced_accuracy": float((r.tar[best] + 1.0 - r.far[best]) / 2.0),
           "impostor_correlation": round(float(np.corrcoef(s1[~same], s2[~same])[0, 1]), 3),
           "gates": gates(s1[same], a * s1[same] + bb * s2[same] + c)}
    log.info("%s: %s", name, json.dumps(out))
    return out


def split_people(names: Array, devtest_pairs: Path, resnet_ckpt: Path) -> dict[str, Array]:
    """Masks over photos by person: `devtest` (pairsDevTest's people, only reported), `validation`
    (the ResNet's held-out people, who choose), `train` (everyone else)."""
    from train.pairs import load_pairs

    devtest = set(load_pairs(devtest_pairs).people)
    val = set(json.loads(resnet_ckpt.with_name("state.json").read_text())["validation_people"])
    masks = {"devtest": np.isin(names, list(devtest)), "validation": np.isin(names, list(val))}
    masks["train"] = ~(masks["devtest"] | masks["validation"])
    assert not (devtest | val) & set(names[masks["train"]])
    return masks


def add_inputs(p: argparse.ArgumentParser) -> None:
    """The inputs every fused-model training step reads: LFW, DevTest's people, both towers."""
    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data"
    p.add_argument("--lfw", type=Path, default=shared / "lfw")
    p.add_argument("--devtest", type=Path, default=shared / "lfw-protocol/pairsDevTest.txt")
    p.add_argument("--resnet", type=Path, default=Path("train/checkpoints/resnet/checkpoint.keras"))
    p.add_argument("--faceres", type=Path, default=Path("runs/faceres/faceres.keras"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_inputs(p)
    p.add_argument("--out", type=Path, default=Path("runs/fused"))
    p.add_argument("--per-person", type=int, default=20)
    p.add_argument("--hard", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import keras

    import train.model  # noqa: F401
    from train.model import parts

    _, people, e1, e2 = embed_lfw(args.lfw, args.resnet, args.faceres, Path("cache"))
    assert e2 is not None
    _, head = parts(keras.models.load_model(args.resnet, compile=False))
    kernel, bias = head.get_weights()
    w, b = kernel[:, 0].astype(np.float32), float(bias[0])
    names = np.array(people)
    labels = np.unique(names, return_inverse=True)[1]
    masks = split_people(names, args.devtest, args.resnet)
    train_mask = masks["train"]
    split = {"devtest": masks["devtest"], "validation": masks["validation"]}
    # Only people with two photos give genuine pairs; the rest still serve as strangers.
    t = np.where(train_mask)[0]
    log.info("training the head on %d photos of %d people", len(t), len(set(names[t])))
    rng = np.random.default_rng(args.seed)
    l1 = tower1_logits(e1[t], e1[t], w, b)
    c2 = e2[t] @ e2[t].T
    i, j, same = training_pairs(l1, c2, labels[t], args.per_person, args.hard, rng)
    x = np.stack([l1[i, j], c2[i, j]], axis=1).astype(np.float32)
    log.info("head pairs: %d genuine, %d strangers (hard and random)", int(same.sum()), int((1 - same).sum()))
    fusion = fit_head(x, same, args.seed)
    impostor_cos2 = float(c2[labels[t][:, None] != labels[t][None, :]].mean())
    log.info("fusion: score = sigmoid(%.4f * logit1 + %.4f * cos2 + %.4f); stranger mean cos2 %.4f",
             *fusion, impostor_cos2)
    result: dict[str, Any] = {
        "fusion": dict(zip(("a", "b", "c"), fusion, strict=True)), "stranger_mean_cos2": impostor_cos2,
        "train": {"photos": len(t), "people": len(set(names[t])), "genuine_pairs": int(same.sum()),
                  "stranger_pairs": int((1 - same).sum()), "per_person": args.per_person, "hard": args.hard},
        "crop": {"size": FACERES_CROP.size, "margin": FACERES_CROP.margin, "method": FACERES_CROP.method},
    }
    for name, mask in split.items():
        k = np.where(mask)[0]
        result[name] = report(name, e1[k], e2[k], labels[k], w, b, fusion)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion.json").write_text(json.dumps(result, indent=2))
    log.info("wrote %s", args.out / "fusion.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
