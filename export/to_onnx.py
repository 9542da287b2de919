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
    for value in list(graph.input) + list(graph.output):
        value.name = renames[value.name]
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    return proto


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


def parity_crops(meta: dict[str, Any], n: int = 24) -> np.ndarray:
    """Real aligned face crops from LFW, through the daemon's detect -> align code."""
    from accessd.align import CropSpec
    from train.faces import prepare_faces

    root = Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data/lfw"
    people = sorted(p.name for p in root.iterdir() if p.is_dir())[:12]
    spec = CropSpec(meta["input_size"][0], meta["crop_margin"], meta["alignment"])
    faces = prepare_faces(root, Path("models/detector/face_detection_full_range_sparse.tflite"),
                          spec, Path("cache"), workers=1, only_people=people)
    return faces.crops[:n]


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import keras

    import train.model  # noqa: F401 - registers the custom layers for loading

    model = keras.models.load_model(args.checkpoint, compile=False)
    state_path = args.checkpoint.with_name("state.json")
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    report = json.loads(args.report.read_text()) if args.report else None
    proto = to_onnx(model, args.opset)
    meta = contract(model, weights_sha256(model), state, report)
    if args.detection_threshold is not None:
        meta["suggested_by_training"] = meta["detection_threshold"]
        meta["detection_threshold"] = args.detection_threshold
    meta["verification_threshold"] = args.verification_threshold
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, json.dumps(meta, sort_keys=True)
    proto.producer_name = "accessd export/to_onnx.py"
    diff = check_parity(model, proto, parity_crops(meta))
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


if __name__ == "__main__":
    raise SystemExit(main())
