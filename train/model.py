"""Siamese network: one shared embedding network, an L1-distance layer, a sigmoid head.

Two embedding architectures, chosen by name:
- `koch`: the seed design (Koch et al. 2015, as in the Siamese-verification
  tutorials): 100x100 input, four conv stages and a 4096-unit sigmoid layer.
  ~39 M parameters, ~150 MB as ONNX.
- `resnet` (default): dlib's face-recognition ResNet (29 conv layers, 150x150
  dlib face chips, 128-d), built layer for layer so that dlib's pretrained
  weights (`train.import_dlib`) reproduce its descriptors; ~5.6 M parameters.
- `compact`: a MobileFaceNet-style depthwise-separable CNN on 64x64
  crops with a global depthwise-conv head (keeps where on the aligned face a
  feature is, which average pooling would throw away); ~0.05 GFLOP per photo,
  0.7 M parameters, so it trains on a CPU within a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import layers, ops

# Pixel normalisation of the from-scratch models (written into the ONNX metadata).
MEAN = (127.5, 127.5, 127.5)
STD = (127.5, 127.5, 127.5)
# dlib's: (pixel - mean) / 256 per RGB channel, the mean read from its model file.
DLIB_MEAN = (122.78199768066406, 117.0009994506836, 104.2979965209961)
DLIB_STD = (256.0, 256.0, 256.0)


@dataclass(frozen=True)
class Architecture:
    """An embedding network and the input contract that goes with it."""

    name: str
    input_size: int
    embedding_size: int
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    alignment: str = "box"  # accessd.align.CropSpec.method
    crop_margin: float = 0.2
    # Mean embedding of the crop and its mirror image at test time: +1.3 points for
    # `compact`; dlib's ResNet was trained without it and runs twice as fast without.
    test_time_flip: bool = True


ARCHITECTURES = {
    "koch": Architecture("koch", 100, 4096),
    "compact": Architecture("compact", 64, 128),
    "resnet": Architecture("resnet", 150, 128, DLIB_MEAN, DLIB_STD, "landmarks", 0.25),
}

# Moving statistics settle within a few hundred steps (Keras' 0.99 needs
# thousands), so short CPU runs and smoke tests evaluate sensibly.
BN_MOMENTUM = 0.9


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


@keras.saving.register_keras_serializable(package="accessd")
class Affine(layers.Layer):
    """y = x * gamma + beta per channel: dlib's `affine_` (batch norm folded at the end of training).

    Not BatchNormalization: fine-tuning with small CPU batches must not switch
    to batch statistics.
    """

    def build(self, input_shape: Any) -> None:
        c = int(input_shape[-1])
        self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")

    def call(self, x: Any) -> Any:
        return x * self.gamma + self.beta


@keras.saving.register_keras_serializable(package="accessd")
class PadChannels(layers.Layer):
    """Zero channels appended at the end: dlib's add_prev with a narrower shortcut."""

    def __init__(self, extra: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    def call(self, x: Any) -> Any:
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "extra": self.extra}


# dlib's ResNet (dnn_face_recognition_ex.cpp), stage by stage: (filters, blocks);
# the first block of every stage after the first halves the map.
RESNET_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def _resnet_block(x: Any, filters: int, down: bool, name: str) -> Any:
    """conv(3x3, stride) -> affine -> relu -> conv(3x3) -> affine, added to the shortcut, relu.

    dlib pads stride-1 3x3 convs by 1 and never pads stride-2 ones (VALID). Its
    add_prev of unequal shapes zero-fills the smaller operand at the end: the
    avg-pooled shortcut gets extra channels, and where the strided conv yields
    3x3 (1x1) against the shortcut's 4x4 (2x2), the conv branch is padded at the
    bottom and right. Cropping instead would not reproduce dlib.
    """
    y = layers.Conv2D(filters, 3, strides=2 if down else 1, padding="valid" if down else "same",
                      name=f"{name}_conv1")(x)
    y = Affine(name=f"{name}_affine1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    y = Affine(name=f"{name}_affine2")(y)
    shortcut = layers.AveragePooling2D(2, 2, padding="valid", name=f"{name}_pool")(x) if down else x
    if shortcut.shape[-1] < filters:
        shortcut = PadChannels(filters - int(shortcut.shape[-1]), name=f"{name}_padc")(shortcut)
    grow = int(shortcut.shape[1]) - int(y.shape[1])
    if grow > 0:
        y = layers.ZeroPadding2D(((0, grow), (0, grow)), name=f"{name}_pads")(y)
    out = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu")(out)


def _resnet(arch: Architecture) -> keras.Model:
    inp = keras.Input((arch.input_size, arch.input_size, 3), name="image")
    x = layers.Conv2D(32, 7, strides=2, padding="valid", name="stem_conv")(inp)
    x = Affine(name="stem_affine")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, 2, padding="valid", name="stem_pool")(x)
    for s, (filters, blocks, down) in enumerate(RESNET_STAGES):
        for b in range(blocks):
            x = _resnet_block(x, filters, down and b == 0, f"stage{s}_block{b}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(arch.embedding_size, use_bias=False, name="embedding")(x)
    return keras.Model(inp, out, name="embedding_resnet")


def build_embedding(name: str) -> keras.Model:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    builders = {"koch": _koch, "compact": _compact, "resnet": _resnet}
    return builders[name](arch)


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


def embed_for_serving(embed: keras.Model, images: Any) -> Any:
    """The embedding the daemon uses: with the mirror-image average where the architecture asks for it.

    Used wherever a trained model embeds for real (evaluation, export), so the
    Keras and ONNX numbers stay comparable. For `compact`, the flip gives +1.3
    points of validation accuracy for twice the embedding cost (about 1 ms per face).
    """
    if not ARCHITECTURES[embed.name.removeprefix("embedding_")].test_time_flip:
        return embed(images, training=False)
    return (embed(images, training=False) + embed(ops.flip(images, axis=2), training=False)) / 2.0


def arch_of(model: keras.Model) -> str:
    embed, _ = parts(model)
    return embed.name.removeprefix("embedding_")


def contrastive_loss(margin: float = 1.0) -> Any:
    def loss(y_true: Any, distance: Any) -> Any:
        y = ops.cast(y_true, distance.dtype)
        return ops.mean(y * ops.square(distance) + (1.0 - y) * ops.square(ops.relu(margin - distance)))

    return loss
