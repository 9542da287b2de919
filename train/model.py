"""Siamese network: one shared embedding network, an L1-distance layer, a sigmoid head.

Two embedding architectures, chosen by name:
- `koch`: the seed design (Koch et al. 2015, as in the Siamese-verification
  tutorials): 100x100 input, four conv stages and a 4096-unit sigmoid layer.
  ~39 M parameters, ~150 MB as ONNX.
- `compact` (default): a MobileFaceNet-style depthwise-separable CNN on 64x64
  crops with a global depthwise-conv head (keeps where on the aligned face a
  feature is, which average pooling would throw away); ~0.05 GFLOP per photo,
  0.7 M parameters, so it trains on a CPU within a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import layers, ops


@dataclass(frozen=True)
class Architecture:
    name: str
    input_size: int
    embedding_size: int


ARCHITECTURES = {
    "koch": Architecture("koch", 100, 4096),
    "compact": Architecture("compact", 64, 128),
}

# Moving statistics settle within a few hundred steps (Keras' 0.99 needs
# thousands), so short CPU runs and smoke tests evaluate sensibly.
BN_MOMENTUM = 0.9

# Pixel normalisation shared by training and the daemon (written into the ONNX metadata).
MEAN = (127.5, 127.5, 127.5)
STD = (127.5, 127.5, 127.5)


def _koch(arch: Architecture) -> keras.Model:
    inp = keras.Input((arch.input_size, arch.input_size, 3), name="image")
    x = layers.Conv2D(64, 10, activation="relu")(inp)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Conv2D(128, 7, activation="relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Conv2D(128, 4, activation="relu")(x)
    x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Conv2D(256, 4, activation="relu")(x)
    x = layers.Flatten()(x)
    out = layers.Dense(arch.embedding_size, activation="sigmoid", name="embedding")(x)
    return keras.Model(inp, out, name="embedding_koch")


def _sep_block(x: Any, filters: int, stride: int, name: str) -> Any:
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_pw_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def _compact(arch: Architecture) -> keras.Model:
    inp = keras.Input((arch.input_size, arch.input_size, 3), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 1), (512, 2), (512, 1)]
    for i, (filters, stride) in enumerate(plan):
        x = _sep_block(x, filters, stride, f"block{i}")
    # Global depthwise conv over the whole 6x6 map (MobileFaceNet's GDC).
    x = layers.DepthwiseConv2D(int(x.shape[1]), padding="valid", use_bias=False, name="gdc")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="gdc_bn")(x)
    x = layers.Flatten()(x)
    out = layers.Dense(arch.embedding_size, name="embedding")(x)
    return keras.Model(inp, out, name="embedding_compact")


def build_embedding(name: str) -> keras.Model:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    return _koch(arch) if name == "koch" else _compact(arch)


@keras.saving.register_keras_serializable(package="accessd")
class L1Distance(layers.Layer):
    """|a - b| element-wise: the Siamese distance the head scores."""

    def call(self, a: Any, b: Any) -> Any:
        return ops.abs(a - b)


@keras.saving.register_keras_serializable(package="accessd")
class L2Distance(layers.Layer):
    """Euclidean distance, for the contrastive loss."""

    def call(self, a: Any, b: Any) -> Any:
        return ops.sqrt(ops.sum(ops.square(a - b), axis=-1, keepdims=True) + 1e-9)


def build_siamese(arch_name: str) -> keras.Model:
    """Training model: (anchor, other) -> score, plus embeddings and distance for the aux losses."""
    arch = ARCHITECTURES[arch_name]
    embed = build_embedding(arch_name)
    shape = (arch.input_size, arch.input_size, 3)
    a = keras.Input(shape, name="anchor")
    b = keras.Input(shape, name="other")
    ea = embed(a)
    eb = embed(b)
    dist = L1Distance(name="l1")(ea, eb)
    score = layers.Dense(1, activation="sigmoid", name="head")(dist)
    outputs = {
        "score": layers.Identity(name="score")(score),
        "emb_a": layers.Identity(name="emb_a")(ea),
        "emb_b": layers.Identity(name="emb_b")(eb),
        "distance": L2Distance(name="distance")(ea, eb),
    }
    return keras.Model({"anchor": a, "other": b}, outputs, name=f"siamese_{arch_name}")


def parts(model: keras.Model) -> tuple[keras.Model, layers.Dense]:
    """The shared embedding network and the head of a Siamese model."""
    embed = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    head = model.get_layer("head")
    assert isinstance(head, layers.Dense)
    return embed, head


def embed_with_flip(embed: keras.Model, images: Any) -> Any:
    """Mean embedding of the crops and their mirror images (test-time augmentation).

    Used wherever a trained model embeds for real (evaluation, export), so the
    Keras and ONNX numbers stay comparable; +1.3 points of validation accuracy
    for twice the embedding cost (about 1 ms per face on the CPU).
    """
    return (embed(images, training=False) + embed(ops.flip(images, axis=2), training=False)) / 2.0


def arch_of(model: keras.Model) -> str:
    embed, _ = parts(model)
    return embed.name.removeprefix("embedding_")


def contrastive_loss(margin: float = 1.0) -> Any:
    def loss(y_true: Any, distance: Any) -> Any:
        y = ops.cast(y_true, distance.dtype)
        return ops.mean(y * ops.square(distance) + (1.0 - y) * ops.square(ops.relu(margin - distance)))

    return loss
