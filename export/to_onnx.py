"""Export a trained Siamese checkpoint to the ONNX model the daemon runs.

    python export/to_onnx.py runs/resnet/checkpoint.keras models/accessd-resnet.onnx \\
        [--report models/accessd-resnet.devtest.json]

One graph with two inputs, so the daemon can cache gallery embeddings and still
score a frame in one call:
    image   float32 [N, S, S, 3]  normalised face crops (contract below)
    gallery float32 [M, D]        enrolled embeddings
  ->
    embedding float32 [N, D]
    scores    float32 [N, M]      sigmoid(head(|embedding_i - gallery_j|))
The contract (input size, colour order, normalisation, thresholds, evaluation,
weights hash) is written to the ONNX metadata under `accessd.contract`; the
daemon refuses a model without it. Parity with Keras is checked on real face
crops (max abs difference <= 1e-4) and the export fails loudly otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("export")

PARITY_TOLERANCE = 1e-4
CONTRACT_KEY = "accessd.contract"


def weights_sha256(model: Any) -> str:
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def to_onnx(model: Any, opset: int = 17) -> Any:
    import tensorflow as tf
    import tf2onnx

    from train.model import embed_for_serving, parts

    embed, head = parts(model)
    size = int(embed.input_shape[1])
    dim = int(embed.output_shape[-1])
    # numpy, made constants inside the function: captured eager tensors would
    # become extra graph inputs instead of initializers.
    kernel_np, bias_np = head.get_weights()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32, name="image"),
            tf.TensorSpec([None, dim], tf.float32, name="gallery"),
        ]
    )
    def serve(image: Any, gallery: Any) -> dict[str, Any]:
        emb = embed_for_serving(embed, image)
        diff = tf.abs(emb[:, None, :] - gallery[None, :, :])
        logits = tf.tensordot(diff, tf.constant(kernel_np[:, 0]), axes=1) + tf.constant(bias_np[0])
        return {"embedding": tf.identity(emb, name="embedding"), "scores": tf.sigmoid(logits, name="scores")}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    # tf2onnx names graph inputs after TF tensors; give them the contract's names.
    graph = proto.graph
    renames = dict(zip([i.name for i in graph.input], ["image", "gallery"], strict=True))
    renames.update(zip([o.name for o in graph.output], ["embedding", "scores"], strict=True))
    _rename(proto, renames)
    return proto


@dataclass(frozen=True)
class Cohort:
    """Strangers every face is also scored against: embeddings (both towers) and how many of the
    highest scores make the face's own statistics."""

    embeddings: np.ndarray
    k: int
    contract: dict[str, Any]


def cohort_of(model: Any, second: Any, specs: list[tuple[int, float, str]], size: int, k: int,
              threshold: float, seed: int, state: dict[str, Any]) -> Cohort:
    """One photo each of `size` training people, never a DevTest or a held-out (validation) person:
    those choose and report thresholds, and a cohort made of them would score them as strangers."""
    from accessd.align import CropSpec
    from train.faces import prepare_towers
    from train.import_faceres import embed_crops
    from train.pairs import load_pairs
    from train.scoring import embed_numpy

    shared = Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data"
    root = shared / "lfw"
    excluded = set(load_pairs(shared / "lfw-protocol/pairsDevTest.txt").people) | set(state["validation_people"])
    people = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in excluded)
    chosen = sorted(np.random.default_rng(seed).choice(people, size, replace=False).tolist())
    sets = prepare_towers(root, Path("models/detector/face_detection_full_range_sparse.tflite"),
                          [CropSpec(*spec) for spec in specs], Path("cache"), workers=1, only_people=chosen)
    first = sorted({q: i for i, q in reversed(list(enumerate(sets[0].people)))}.values())
    e1 = embed_numpy(model, sets[0].crops[first], batch=32)
    e2 = embed_crops(second, sets[1].crops[first], batch=32)
    log.info("cohort: %d photos of %d people drawn from %d training people", len(first), len(first), len(people))
    return Cohort(np.concatenate([e1, e2], axis=1).astype(np.float32), k, {
        "photos": len(first), "k": k, "threshold": threshold, "seed": seed,
        "people_from": "LFW minus pairsDevTest.txt and the held-out validation people, one photo each",
    })


def fused_to_onnx(model: Any, second: Any, fusion: dict[str, Any], opset: int = 17,
                  cohort: Cohort | None = None) -> Any:
    """Both towers and the fusion head in one graph, with the cascade (see the module docstring)."""
    import tensorflow as tf
    import tf2onnx

    from train.import_faceres import embed_for_serving as embed_second
    from train.model import embed_for_serving, parts

    embed, head = parts(model)
    size1, d1 = int(embed.input_shape[1]), int(embed.output_shape[-1])
    size2, d2 = int(second.input_shape[1]), int(second.output_shape[-1])
    kernel_np, bias_np = head.get_weights()
    a, b, c = (float(fusion["fusion"][k]) for k in ("a", "b", "c"))
    stranger_cos2 = float(fusion["stranger_mean_cos2"])
    if cohort is not None:
        c1_np = cohort.embeddings[:, :d1]
        c2_np = cohort.embeddings[:, d1:] / np.linalg.norm(cohort.embeddings[:, d1:], axis=1, keepdims=True)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, size1, size1, 3], tf.float32, name="image"),
            tf.TensorSpec([None, d1 + d2], tf.float32, name="gallery"),
            tf.TensorSpec([None, size2, size2, 3], tf.float32, name="image2"),
            tf.TensorSpec([], tf.float32, name="gate"),
        ]
    )
    def serve(image: Any, gallery: Any, image2: Any, gate: Any) -> dict[str, Any]:
        e1 = embed_for_serving(embed, image)
        g1, g2 = gallery[:, :d1], gallery[:, d1:]
        diff = tf.abs(e1[:, None, :] - g1[None, :, :])
        logit1 = tf.tensordot(diff, tf.constant(kernel_np[:, 0]), axes=1) + tf.constant(bias_np[0])
        # The cascade, per face: the second tower runs only on faces whose best first-tower
        # score reaches the gate (gate <= 0: on every face). For the others its cosine is
        # taken to be a stranger's mean, and export proves they cannot then reach the
        # detection threshold. Rows are gathered and scattered back rather than branched
        # on: tf2onnx's If branches lose the convolutions' shapes, and a batch of zero
        # faces costs nothing.
        need = tf.logical_or(gate <= 0.0, tf.reduce_max(tf.sigmoid(logit1), axis=1) >= gate)
        rows = tf.where(need)
        chosen = embed_second(second, tf.gather_nd(image2, rows))
        e2 = tf.scatter_nd(rows, chosen, tf.stack([tf.shape(image2, out_type=tf.int64)[0], tf.constant(d2, tf.int64)]))
        g2n = g2 / tf.maximum(tf.norm(g2, axis=1, keepdims=True), 1e-12)  # templates are means: renormalise
        cos2 = tf.where(need[:, None], tf.matmul(e2, g2n, transpose_b=True), stranger_cos2)
        scores = tf.sigmoid(a * logit1 + b * cos2 + c)
        emb = tf.concat([e1, e2], axis=1)
        out = {"embedding": tf.identity(emb, name="embedding"), "scores": tf.identity(scores, name="scores")}
        if cohort is not None:
            # The face against a fixed cohort of strangers (accessd/decide.py, cohort check): the
            # mean and spread of its k highest log-odds. Outside the gate's max, so the cohort
            # never makes the second tower run.
            cdiff = tf.abs(e1[:, None, :] - tf.constant(c1_np)[None, :, :])
            clogit1 = tf.tensordot(cdiff, tf.constant(kernel_np[:, 0]), axes=1) + tf.constant(bias_np[0])
            ccos2 = tf.where(need[:, None], tf.matmul(e2, tf.constant(c2_np), transpose_b=True), stranger_cos2)
            top = tf.math.top_k(a * clogit1 + b * ccos2 + c, k=cohort.k).values
            mean = tf.reduce_mean(top, axis=1)
            spread = tf.sqrt(tf.reduce_mean(tf.square(top - mean[:, None]), axis=1))
            out["cohort"] = tf.identity(tf.stack([mean, spread], axis=1), name="cohort")
        return out

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    graph = proto.graph
    renames = dict(zip([i.name for i in graph.input], ["image", "gallery", "image2", "gate"], strict=True))
    # tf.nest flattens a dict by sorted key: that is the graph outputs' order.
    names = sorted(["embedding", "scores"] + (["cohort"] if cohort is not None else []))
    renames.update(zip([o.name for o in graph.output], names, strict=True))
    _rename(proto, renames)
    return proto


def _rename(proto: Any, renames: dict[str, str]) -> None:
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames[value.name]
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def cascade_gate(threshold: float, fusion: dict[str, Any]) -> float:
    """The cascade's gate: the lower of two first-tower scores.

    - below `limit`, no face can reach `threshold` with the stranger-mean cosine the graph
      assumes for a skipped face, so skipping refuses no one who could have been granted
      on the first tower's evidence;
    - below the validation people's gate for this threshold lie only 0.1 % of the genuine
      pairs the fused score accepts (train.fusion), so few faces that the second tower
      would have rescued are skipped.
    """
    table = fusion["validation"]["gates"]
    key = f"{threshold:.2f}"
    if key not in table:
        raise SystemExit(f"no cascade gate for detection threshold {threshold} in the fusion report; "
                         f"it has {', '.join(table)}")
    a, b, c = (float(fusion["fusion"][k]) for k in ("a", "b", "c"))
    logit_thr = float(np.log(threshold / (1.0 - threshold)))
    limit = (logit_thr - b * float(fusion["stranger_mean_cos2"]) - c) / a  # a > 0: checked at export
    return float(min(1.0 / (1.0 + np.exp(-limit)), table[key]))


def contract(model: Any, sha: str, state: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    from train.model import ARCHITECTURES, arch_of, parts

    embed, _ = parts(model)
    arch = ARCHITECTURES[arch_of(model)]
    validation = state.get("validation", {})
    # Deny-leaning: the lowest threshold at which at most 1% of stranger pairs of
    # held-out people match (not the accuracy-maximising one, which lets ~10% of
    # stranger pairs through). The daemon adds its own caution on top: a majority
    # of a person's photos must match, with a margin, in K of N frames.
    # A model trained for the door (train.finetune) records the threshold it picked
    # per attempt on held-out people; that one wins.
    suggested = validation.get("door_threshold",
                               validation.get("val_threshold_far_1e-2", validation.get("val_threshold", 0.5)))
    return {
        "format": 1,
        "input_size": [int(embed.input_shape[1]), int(embed.input_shape[2])],
        "color_order": "RGB",
        "layout": "NHWC",
        "mean": list(arch.mean),
        "std": list(arch.std),
        "crop_margin": arch.crop_margin,
        "alignment": arch.alignment,
        "test_time_flip": arch.test_time_flip,
        "embedding_size": int(embed.output_shape[-1]),
        "architecture": arch_of(model),
        "training": {
            k: state.get(k) for k in ("data", "teacher", "loss", "epoch", "eval_pairs", "excluded_eval_people")
        },
        "validation": validation,
        "evaluation": report or {},
        "detection_threshold": float(suggested),
        # Most accurate on held-out people: the LFW-style operating point, not the door's.
        "balanced_threshold": float(validation.get("val_threshold", 0.5)),
        "verification_threshold": 0.5,
        "weights_sha256": sha,
    }


def parity_crops(specs: list[tuple[int, float, str]], n: int = 24) -> list[np.ndarray]:
    """Real aligned face crops from LFW, through the daemon's detect -> align code: one batch per
    tower, the same faces in each."""
    from accessd.align import CropSpec
    from train.faces import prepare_towers

    root = Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data/lfw"
    people = sorted(p.name for p in root.iterdir() if p.is_dir())[:12]
    sets = prepare_towers(root, Path("models/detector/face_detection_full_range_sparse.tflite"),
                          [CropSpec(*spec) for spec in specs], Path("cache"), workers=1, only_people=people)
    return [s.crops[:n] for s in sets]


def check_parity(model: Any, proto: Any, crops: np.ndarray) -> float:
    import onnxruntime as ort

    from train.data import normalise
    from train.model import arch_of
    from train.scoring import embed_numpy, pair_scores

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = normalise(crops, arch_of(model))
    ref_emb = embed_numpy(model, crops)
    emb_onnx, scores_onnx = sess.run(["embedding", "scores"], {"image": x, "gallery": ref_emb})
    ref_scores = np.stack([pair_scores(model, np.repeat(e[None], len(ref_emb), 0), ref_emb) for e in ref_emb])
    return float(max(np.max(np.abs(emb_onnx - ref_emb)), np.max(np.abs(scores_onnx - ref_scores))))


def check_fused_parity(model: Any, second: Any, fusion: dict[str, Any], proto: Any,
                       crops: list[np.ndarray], cohort: Cohort | None = None) -> float:
    """Max |Keras - ONNX Runtime| over embeddings and fused scores, the cascade open and shut."""
    import onnxruntime as ort

    from train.data import normalise
    from train.import_faceres import embed_crops, preprocess
    from train.model import arch_of, parts
    from train.scoring import embed_numpy

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x1, x2 = normalise(crops[0], arch_of(model)), preprocess(crops[1])
    e1 = embed_numpy(model, crops[0])
    e2 = embed_crops(second, crops[1])
    _, head = parts(model)
    kernel, bias = head.get_weights()
    logit1 = np.abs(e1[:, None] - e1[None]) @ kernel[:, 0] + bias[0]
    a, b, c = (float(fusion["fusion"][k]) for k in ("a", "b", "c"))
    gallery = np.concatenate([e1, e2], axis=1)
    worst = 0.0
    stranger = float(fusion["stranger_mean_cos2"])
    outputs = ["embedding", "scores"] + (["cohort"] if cohort is not None else [])
    for gate, cos2, emb2 in ((-1.0, e2 @ e2.T, e2), (2.0, stranger, np.zeros_like(e2))):
        ref_scores = 1.0 / (1.0 + np.exp(-(a * logit1 + b * cos2 + c)))
        emb, scores, *rest = sess.run(outputs, {"image": x1, "gallery": gallery, "image2": x2,
                                                "gate": np.asarray(gate, np.float32)})
        worst = max(worst, float(np.max(np.abs(emb - np.concatenate([e1, emb2], axis=1)))),
                    float(np.max(np.abs(scores - ref_scores))))
        if cohort is not None:
            d1 = e1.shape[1]
            c1, c2 = cohort.embeddings[:, :d1], cohort.embeddings[:, d1:]
            c2 = c2 / np.linalg.norm(c2, axis=1, keepdims=True)
            ccos2 = e2 @ c2.T if gate < 0 else stranger
            lo = a * (np.abs(e1[:, None] - c1[None]) @ kernel[:, 0] + bias[0]) + b * ccos2 + c
            top = -np.sort(-lo, axis=1)[:, : cohort.k]
            ref = np.stack([top.mean(axis=1), top.std(axis=1)], axis=1)
            # Log-odds run to tens: compared relative to their size.
            worst = max(worst, float(np.max(np.abs(rest[0] - ref) / np.maximum(1.0, np.abs(ref)))))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a Keras Siamese checkpoint to ONNX.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--report", type=Path, help="evaluation JSON (train.evaluate --json) to embed")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--detection-threshold", type=float,
                        help="the door's default pair threshold, as chosen per attempt by train.door_eval on "
                             "held-out people (default: the run's own suggestion)")
    parser.add_argument("--verification-threshold", type=float, default=0.5,
                        help="the verification threshold that detection threshold was chosen with")
    parser.add_argument("--second", type=Path,
                        help="a second tower (train.import_faceres's Keras model): export the fused model")
    parser.add_argument("--fusion", type=Path, default=Path("runs/fused/fusion.json"),
                        help="with --second: the fusion head (train.fusion)")
    parser.add_argument("--cohort", type=int, default=0,
                        help="with --second: score every face against this many training strangers too "
                             "(the cohort check; 0: none)")
    parser.add_argument("--cohort-k", type=int, default=100,
                        help="the face's k highest cohort scores make its statistics")
    parser.add_argument("--cohort-threshold", type=float, default=4.0,
                        help="the cohort check's default: how many spreads above the face's cohort mean a verified "
                             "person's quorum score must lie (chosen per attempt on held-out people)")
    parser.add_argument("--cohort-seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import keras

    import train.model  # noqa: F401 - registers the custom layers for loading

    model = keras.models.load_model(args.checkpoint, compile=False)
    state_path = args.checkpoint.with_name("state.json")
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    report = json.loads(args.report.read_text()) if args.report else None
    meta = contract(model, weights_sha256(model), state, report)
    if args.detection_threshold is not None:
        meta["suggested_by_training"] = meta["detection_threshold"]
        meta["detection_threshold"] = args.detection_threshold
    meta["verification_threshold"] = args.verification_threshold
    specs = [(meta["input_size"][0], meta["crop_margin"], meta["alignment"])]
    if args.second is not None:
        second = keras.models.load_model(args.second, compile=False)
        fusion = json.loads(args.fusion.read_text())
        if not float(fusion["fusion"]["a"]) > 0 or not float(fusion["fusion"]["b"]) > 0:
            log.error("%s: the fusion head must weigh both towers positively", args.fusion)
            return 1
        if args.detection_threshold is None:
            log.error("a fused model needs --detection-threshold (its score is not the first tower's)")
            return 1
        meta.update(fused_contract(model, second, fusion, args.detection_threshold, meta["validation"]))
        tuned = args.second.with_name("history.json")  # written by train.finetune_faceres
        if tuned.is_file():
            history = json.loads(tuned.read_text())
            meta["second"]["fine_tuned"] = {
                "by": "train.finetune_faceres", "on": "LFW minus pairsDevTest minus the held-out people",
                **{k: history[k] for k in ("cut", "lr", "pairs_per_epoch", "kept_epoch")}}
        specs.append((meta["second"]["input_size"][0], meta["second"]["crop_margin"], meta["second"]["alignment"]))
        cohort = None
        if args.cohort:
            cohort = cohort_of(model, second, specs, args.cohort, args.cohort_k, args.cohort_threshold,
                               args.cohort_seed, state)
            meta["cohort"] = cohort.contract
        proto = fused_to_onnx(model, second, fusion, args.opset, cohort)
    else:
        proto = to_onnx(model, args.opset)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, json.dumps(meta, sort_keys=True)
    proto.producer_name = "accessd export/to_onnx.py"
    crops = parity_crops(specs)
    if args.second is not None:
        diff = check_fused_parity(model, second, fusion, proto, crops, cohort)
    else:
        diff = check_parity(model, proto, crops[0])
    if not diff <= PARITY_TOLERANCE:
        log.error("parity check FAILED: max |Keras - ONNX Runtime| = %.3g > %.0e", diff, PARITY_TOLERANCE)
        return 1
    log.info("parity ok: max |Keras - ONNX Runtime| = %.3g on real face crops", diff)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(args.output)
    log.info("wrote %s (%.1f MB)", args.output, args.output.stat().st_size / 1e6)
    return 0


def fused_contract(model: Any, second: Any, fusion: dict[str, Any], threshold: float,
                   meta_validation: dict[str, Any]) -> dict[str, Any]:
    """What a fused model adds to the first tower's contract."""
    from train.import_faceres import MEAN_BGR, PINNED, VERSION
    from train.model import parts

    embed, _ = parts(model)
    d1, d2 = int(embed.output_shape[-1]), int(second.output_shape[-1])
    crop = fusion["crop"]
    return {
        "architecture": "resnet+faceres",
        "embedding_size": d1 + d2,
        "second": {
            "architecture": "faceres",
            "input_size": [int(second.input_shape[1]), int(second.input_shape[2])],
            "color_order": "BGR",
            "mean": list(MEAN_BGR),
            "std": [1.0, 1.0, 1.0],
            "crop_margin": crop["margin"],
            "alignment": crop["method"],
            "embedding_size": d2,
            "test_time_flip": True,  # train.import_faceres.embed_for_serving
            "source": {"package": VERSION, "sha256": PINNED},
            "weights_sha256": weights_sha256(second),
        },
        "fusion": fusion["fusion"] | {"stranger_mean_cos2": fusion["stranger_mean_cos2"]},
        "fusion_training": fusion["train"],
        # The held-out people's numbers are the fused model's; the first tower's own stay beside them.
        "validation": fusion["validation"],
        "first_tower_validation": meta_validation,
        "balanced_threshold": float(fusion["validation"]["balanced_threshold"]),
        "cascade_gate": cascade_gate(threshold, fusion),
        "weights_sha256": hashlib.sha256((weights_sha256(model) + weights_sha256(second)).encode()).hexdigest(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
