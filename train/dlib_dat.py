"""A pure-numpy reader of dlib's DNN `.dat` files (dlib's own serialisation).

Written for `dlib_face_recognition_resnet_model_v1.dat` (PyPI
`face-recognition-models`, CC0) so the project can start from dlib's weights
without dlib: the layout was checked against dlib's source and the bytes
(`../shared/notes/dlib-dat-format.md`). The reader returns each computational
layer in forward order with its parameters; `train.import_dlib` maps them onto
the Keras network. Nothing here knows the network's shape: it reads what the
file says and fails, naming the offset, on anything it does not expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt


class DatError(ValueError):
    """A file that is not the dlib DNN format this reader knows; the message names the offset."""


@dataclass
class Layer:
    """One computational layer: its dlib tag (`con_4`, `affine_`, ...) and what it stores."""

    tag: str
    params: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    fields: dict[str, int] = field(default_factory=dict)


@dataclass
class DlibNet:
    loss: str
    margin: float
    dist_thresh: float
    input_mean: tuple[float, float, float]  # RGB, subtracted before dividing by 256
    input_size: tuple[int, int]
    layers: list[Layer]  # forward order, input first


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> DatError:
        return DatError(f"offset {self.pos:#x}: {what}")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def int(self) -> int:
        # dlib's integer: a control byte (low nibble = byte count, 0x80 = negative), then little-endian bytes.
        control = self.byte()
        size = control & 0x0F
        if size == 0 or size > 8:
            raise self.fail(f"bad integer control byte {control:#04x}")
        raw = self.data[self.pos : self.pos + size]
        if len(raw) != size:
            raise self.fail("unexpected end of file in an integer")
        self.pos += size
        value = int.from_bytes(raw, "little")
        return -value if control & 0x80 else value

    def bool(self) -> bool:
        b = self.byte()
        if b not in (0x30, 0x31):
            raise self.fail(f"bad bool byte {b:#04x}")
        return b == 0x31

    def string(self) -> str:
        n = self.int()
        raw = self.data[self.pos : self.pos + n]
        if len(raw) != n:
            raise self.fail("unexpected end of file in a string")
        self.pos += n
        return raw.decode("ascii")

    def float(self) -> float:
        # float_details: an int64 mantissa, then an int16 exponent (mantissa first, whatever the prose says).
        first = self.data[self.pos] if self.pos < len(self.data) else 0
        if first & 0x70:
            raise self.fail("old ASCII float encoding is not supported")
        mantissa = self.int()
        exponent = self.int()
        specials = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        if exponent in specials:
            return specials[exponent]
        return float(mantissa) * 2.0**exponent

    def tensor(self) -> npt.NDArray[np.float32]:
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        n, k, nr, nc = (self.int() for _ in range(4))
        count = n * k * nr * nc
        end = self.pos + 4 * count
        if end > len(self.data):
            raise self.fail(f"tensor of {count} floats runs past the end of the file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos = end
        return values.reshape((n, k, nr, nc)) if count else values

    def alias(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self.fail(f"alias_tensor version {version}, expected 1")
        n, k, nr, nc = (self.int() for _ in range(4))
        return n, k, nr, nc

    def expect_version(self, want: int, what: str) -> None:
        got = self.int()
        if got != want:
            raise self.fail(f"{what} version {got}, expected {want}")


def _layer_details(r: _Reader) -> Layer:
    tag = r.string()
    if tag in ("con_4", "con_5", "con_6"):
        params = r.tensor().reshape(-1)
        f = {"num_filters": r.int(), "nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(),
             "padding_y": r.int(), "padding_x": r.int()}
        filters, biases = r.alias(), r.alias()
        f["k"] = filters[1]
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        if tag != "con_4":
            f["use_bias"] = int(r.bool())
        if tag == "con_6":
            f["use_relu"] = int(r.bool())
        if biases[1] != f["num_filters"]:
            raise r.fail(f"{tag}: bias alias {biases} disagrees with {f['num_filters']} filters")
        return Layer("con", params, f)
    if tag in ("affine_", "affine_2"):
        params = r.tensor().reshape(-1)
        gamma, _beta = r.alias(), r.alias()
        mode = r.int()
        if tag == "affine_2" and r.bool():
            raise r.fail("disabled affine layers are not supported")
        return Layer("affine", params, {"channels": gamma[1], "mode": mode})
    if tag in ("relu_", "relu_2"):
        if tag == "relu_2" and r.bool():
            raise r.fail("disabled relu layers are not supported")
        return Layer("relu")
    if tag in ("max_pool_2", "avg_pool_2"):
        f = {"nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(), "padding_y": r.int(),
             "padding_x": r.int()}
        return Layer(tag.removesuffix("_2"), fields=f)
    if tag == "add_prev_":
        return Layer("add_prev")
    if tag in ("fc_2", "fc_3"):
        outputs, inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        r.alias()
        r.alias()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if tag == "fc_3":
            r.bool()
        return Layer("fc", params, {"num_outputs": outputs, "num_inputs": inputs, "bias_mode": bias_mode})
    raise r.fail(f"unsupported layer {tag!r}")


def _add_layer_tail(r: _Reader, input_layer: bool) -> None:
    for _ in range(3):  # setup-called, gradient-stale, in-place bookkeeping flags
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    r.tensor()  # params_grad (grad_final for the layer on the input)
    if input_layer:
        r.int()  # _sample_expansion_factor


def read_dat(path: Path) -> DlibNet:
    """Parse a dlib metric-loss network file; every byte must be accounted for."""
    r = _Reader(path.read_bytes())
    try:
        r.expect_version(1, "add_loss_layer")
        loss = r.string()
        if loss != "loss_metric_2":
            raise r.fail(f"loss {loss!r}, expected 'loss_metric_2'")
        margin, dist_thresh = r.float(), r.float()
        # Each wrapper writes its version before recursing into its subnetwork:
        # 2 = add_layer, 1 = tag/skip (no payload later), 3 = the add_layer on the input.
        computational = 0
        while True:
            version = r.int()
            if version == 3:
                break
            if version == 2:
                computational += 1
            elif version != 1:
                raise r.fail(f"unexpected wrapper version {version}")
        input_tag = r.string()
        if input_tag != "input_rgb_image_sized":
            raise r.fail(f"input layer {input_tag!r}, expected 'input_rgb_image_sized'")
        mean = (r.float(), r.float(), r.float())
        size = (r.int(), r.int())
        layers = [_layer_details(r)]
        _add_layer_tail(r, input_layer=True)
        for _ in range(computational):
            layers.append(_layer_details(r))
            _add_layer_tail(r, input_layer=False)
    except IndexError as exc:
        raise r.fail("unexpected end of file") from exc
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the last layer")
    return DlibNet(loss, margin, dist_thresh, mean, size, layers)
