"""The ONNX Runtime session: the only module that touches onnxruntime.

One `SiameseModel` owns one session. It takes the execution providers from the
config and falls back to CPU, logs which provider it got, reads input/output
names and the model's contract from the metadata once, and refuses a model
whose contract is missing or disagrees with its graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from accessd.align import METHODS, CropSpec
from accessd.types import Floats, Image

log = logging.getLogger(__name__)

CONTRACT_KEY = "accessd.contract"
INPUTS = ("image", "gallery")
OUTPUTS = ("embedding", "scores")


class ModelError(RuntimeError):
    """A model file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Contract:
    """What a model expects and suggests, as written into its metadata at export."""

    input_size: tuple[int, int]
    color_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_margin: float
    alignment: str  # accessd.align.CropSpec.method; "box" for models exported before it existed
    embedding_size: int
    architecture: str
    detection_threshold: float
    verification_threshold: float
    weights_sha256: str
    raw: dict[str, Any]

    @classmethod
    def parse(cls, text: str, where: str) -> Contract:
        try:
            d = json.loads(text)
            c = cls(
                input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
                color_order=str(d["color_order"]),
                mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
                crop_margin=float(d["crop_margin"]),
                alignment=str(d.get("alignment", "box")),
                embedding_size=int(d["embedding_size"]),
                architecture=str(d["architecture"]),
                detection_threshold=float(d["detection_threshold"]),
                verification_threshold=float(d["verification_threshold"]),
                weights_sha256=str(d["weights_sha256"]),
                raw=d,
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"{where}: metadata {CONTRACT_KEY} is incomplete or malformed ({exc!r})") from exc
        if c.color_order not in ("RGB", "BGR") or len(c.mean) != 3 or len(c.std) != 3 or 0.0 in c.std:
            raise ModelError(f"{where}: metadata {CONTRACT_KEY} has an invalid colour order or normalisation")
        if c.alignment not in METHODS:
            raise ModelError(f"{where}: metadata {CONTRACT_KEY} has an unknown alignment {c.alignment!r}")
        return c

    @property
    def crop(self) -> CropSpec:
        """How faces must be cut for this model."""
        return CropSpec(self.input_size[0], self.crop_margin, self.alignment)


def _create_session(ort: Any, data: bytes, options: Any, providers: list[str]) -> Any:
    # A CUDA provider whose libraries are missing is an expected fallback on CPU
    # machines, but ORT reports it as a red ERROR stack while creating the
    # session. Only fatal messages pass during creation; which provider we got
    # is logged by the caller, and real load failures still raise.
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(data, sess_options=options, providers=providers)
    finally:
        ort.set_default_logger_severity(3)


class SiameseModel:
    def __init__(self, path: Path, providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0) -> None:
        import onnxruntime as ort

        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"model {path}: cannot read ({exc.strerror or exc})") from exc
        self.path = path
        self.sha256 = hashlib.sha256(data).hexdigest()
        available = set(ort.get_available_providers())
        wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = _create_session(ort, data, options, wanted)
        except Exception as exc:
            raise ModelError(f"model {path}: ONNX Runtime cannot load it ({exc})") from exc
        self.provider = self._session.get_providers()[0]
        if self.provider != wanted[0]:
            log.warning("%s is unavailable here (missing libraries?); falling back to %s", wanted[0], self.provider)
        meta = self._session.get_modelmeta().custom_metadata_map
        if CONTRACT_KEY not in meta:
            raise ModelError(
                f"model {path}: no {CONTRACT_KEY} metadata; export it with export/to_onnx.py"
            )
        self.contract = Contract.parse(meta[CONTRACT_KEY], f"model {path}")
        self._check_graph()
        log.info(
            "model %s (%s, %dx%d -> %d-d) on %s",
            path.name, self.contract.architecture, *self.contract.input_size,
            self.contract.embedding_size, self.provider,
        )
        self._mean = np.asarray(self.contract.mean, np.float32)
        self._inv_std = 1.0 / np.asarray(self.contract.std, np.float32)
        # The first run allocates buffers and picks kernels (hundreds of ms on
        # CUDA); doing it now keeps that cost off the first person at the door.
        self.embed_and_score(np.zeros((1, *self.contract.input_size, 3), np.uint8),
                             np.zeros((1, self.contract.embedding_size), np.float32))

    def _check_graph(self) -> None:
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if set(INPUTS) - inputs.keys() or set(OUTPUTS) - outputs:
            raise ModelError(
                f"model {self.path}: expected inputs {INPUTS} and outputs {OUTPUTS}, "
                f"got {sorted(inputs)} and {sorted(outputs)}"
            )
        h, w = self.contract.input_size
        shape = inputs["image"]
        if len(shape) != 4 or list(shape[1:]) != [h, w, 3]:
            raise ModelError(
                f"model {self.path}: input 'image' has shape {shape}, metadata says [N, {h}, {w}, 3]"
            )
        if list(inputs["gallery"][1:]) != [self.contract.embedding_size]:
            raise ModelError(f"model {self.path}: input 'gallery' shape {inputs['gallery']} "
                             f"disagrees with embedding_size {self.contract.embedding_size}")

    @property
    def input_size(self) -> int:
        return self.contract.input_size[0]

    def preprocess(self, crops: npt.NDArray[np.uint8]) -> Floats:
        """RGB uint8 crops -> the model's normalised float input."""
        x = crops.astype(np.float32)
        if self.contract.color_order == "BGR":
            x = x[..., ::-1]
        return np.ascontiguousarray((x - self._mean) * self._inv_std, dtype=np.float32)

    def embed_and_score(self, crops: npt.NDArray[np.uint8], gallery: Floats) -> tuple[Floats, Floats]:
        """Embeddings of N crops and their N x M pair scores against M gallery embeddings, in one run."""
        if len(gallery) == 0:
            gallery = np.zeros((1, self.contract.embedding_size), np.float32)
            emb, _ = self._session.run(list(OUTPUTS), {"image": self.preprocess(crops), "gallery": gallery})
            return emb, np.zeros((len(crops), 0), np.float32)
        emb, scores = self._session.run(
            list(OUTPUTS), {"image": self.preprocess(crops), "gallery": np.ascontiguousarray(gallery, np.float32)}
        )
        return emb, scores

    def embed(self, crops: npt.NDArray[np.uint8], batch: int = 64) -> Floats:
        parts = [self.embed_and_score(crops[i : i + batch], np.zeros((0, 0), np.float32))[0]
                 for i in range(0, len(crops), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.contract.embedding_size), np.float32)

    def score_pair(self, a: Image, b: Image) -> float:
        emb_b = self.embed(b[None])
        _, scores = self.embed_and_score(a[None], emb_b)
        return float(scores[0, 0])
