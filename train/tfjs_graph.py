"""Our own reader of a TensorFlow.js "graph-model" (model.json + weight shards), and a literal evaluator.

The format, as `tfjs-converter` writes it:
- `modelTopology.node`: a TensorFlow GraphDef as JSON (op, name, inputs, attrs; string attrs base64);
- `weightsManifest`: groups of weights in order, concatenated in the shard files; a weight with
  `quantization.dtype` float16 is stored as float16 and widened back to float32 here.

`evaluate` runs the graph node by node with TensorFlow's own kernels (`tf.raw_ops`),
exactly as the GraphDef says: it is the reference a rebuilt model is proven against,
not the model the door runs. Only the ops a graph actually uses need to be known;
an unknown op is an error naming it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8}


class GraphModelError(ValueError):
    """A graph model that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]

    def attr_s(self, key: str) -> str:
        return base64.b64decode(self.attrs[key]["s"]).decode()

    def attr_ints(self, key: str) -> list[int]:
        return [int(i) for i in self.attrs[key]["list"].get("i", [])]


@dataclass(frozen=True)
class GraphModel:
    nodes: dict[str, Node]  # in file order
    weights: dict[str, npt.NDArray[Any]]
    inputs: tuple[str, ...]

    def const(self, name: str) -> npt.NDArray[Any]:
        return self.weights[name]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(json_path: Path) -> GraphModel:
    """Read model.json and its weight shards (beside it)."""
    try:
        doc = json.loads(json_path.read_text())
        topology = doc["modelTopology"]["node"]
        manifest = doc["weightsManifest"]
    except (OSError, ValueError, KeyError) as exc:
        raise GraphModelError(f"{json_path}: not a TensorFlow.js graph model ({exc!r})") from exc
    if doc.get("format") != "graph-model":
        raise GraphModelError(f"{json_path}: format is {doc.get('format')!r}, not 'graph-model'")
    weights: dict[str, npt.NDArray[Any]] = {}
    for group in manifest:
        data = b"".join((json_path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            stored = w.get("quantization", {}).get("dtype", w["dtype"])
            if stored not in _DTYPES or w["dtype"] not in _DTYPES:
                raise GraphModelError(f"{json_path}: weight {w['name']} has unsupported dtype {stored}")
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            nbytes = count * np.dtype(_DTYPES[stored]).itemsize
            if offset + nbytes > len(data):
                raise GraphModelError(f"{json_path}: weight shards end inside {w['name']}")
            raw = np.frombuffer(data, _DTYPES[stored], count, offset)
            weights[w["name"]] = raw.astype(_DTYPES[w["dtype"]]).reshape(w["shape"])
            offset += nbytes
        if offset != len(data):
            raise GraphModelError(f"{json_path}: {len(data) - offset} bytes of weights left unread")
    nodes = {n["name"]: Node(n["name"], n["op"], tuple(n.get("input", ())), n.get("attr", {})) for n in topology}
    missing = [n.name for n in nodes.values() if n.op == "Const" and n.name not in weights]
    if missing:
        raise GraphModelError(f"{json_path}: constants without weights: {missing[:5]}")
    return GraphModel(nodes, weights, tuple(n.name for n in nodes.values() if n.op == "Placeholder"))


def evaluate(graph: GraphModel, feeds: dict[str, npt.NDArray[Any]], output: str) -> npt.NDArray[np.float32]:
    """The value of node `output`, computing each node it needs with TensorFlow's raw op."""
    import tensorflow as tf

    raw = tf.raw_ops
    values: dict[str, Any] = {name: tf.constant(v) for name, v in feeds.items()}

    def value(name: str) -> Any:
        name = name.split(":")[0]
        if name in values:
            return values[name]
        node = graph.nodes[name]
        args = [value(i) for i in node.inputs if not i.startswith("^")]
        if node.op == "Const":
            out = tf.constant(graph.const(name))
        elif node.op == "Conv2D":
            out = raw.Conv2D(input=args[0], filter=args[1], strides=node.attr_ints("strides"),
                             padding=node.attr_s("padding"), dilations=node.attr_ints("dilations"),
                             data_format=node.attr_s("data_format"))
        elif node.op == "DepthwiseConv2dNative":
            out = raw.DepthwiseConv2dNative(input=args[0], filter=args[1], strides=node.attr_ints("strides"),
                                            padding=node.attr_s("padding"), dilations=node.attr_ints("dilations"),
                                            data_format=node.attr_s("data_format"))
        elif node.op in ("Add", "AddV2", "Mul", "Minimum", "Maximum", "Sub"):
            out = getattr(raw, node.op)(x=args[0], y=args[1])
        elif node.op in ("Relu", "Sigmoid", "Softmax", "Identity"):
            out = getattr(raw, node.op)(**{"logits" if node.op == "Softmax" else "features"
                                            if node.op == "Relu" else "x" if node.op == "Sigmoid" else "input":
                                            args[0]})
        elif node.op == "Mean":
            out = raw.Mean(input=args[0], axis=args[1], keep_dims=bool(node.attrs.get("keep_dims", {}).get("b")))
        elif node.op == "_FusedMatMul":
            fused = [base64.b64decode(s).decode() for s in node.attrs["fused_ops"]["list"]["s"]]
            out = raw.MatMul(a=args[0], b=args[1], transpose_a=bool(node.attrs.get("transpose_a", {}).get("b")),
                             transpose_b=bool(node.attrs.get("transpose_b", {}).get("b")))
            for op in fused:
                if op == "BiasAdd":
                    out = raw.BiasAdd(value=out, bias=args[2])
                elif op == "Relu":
                    out = raw.Relu(features=out)
                else:
                    raise GraphModelError(f"node {name}: fused op {op} is not supported")
        else:
            raise GraphModelError(f"node {name}: op {node.op} is not supported")
        values[name] = out
        return out

    return np.asarray(value(output), np.float32)
