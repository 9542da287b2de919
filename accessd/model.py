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
from collections.abc import Sequence
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
COHORT_OUTPUT = "cohort"  # a model with a cohort (`Contract.cohort_threshold`) adds it: see `Scored.cohort`
# A two-tower model adds the second tower's crop and the cascade's gate (see `Contract.cascade_gate`).
SECOND_INPUTS = ("image2", "gate")
ALWAYS = -1.0  # a gate that runs every tower on every face: enrolment, and `accessd bench --no-cascade`

# One face's crops, one per tower; or a batch of them, one N x S x S x 3 array per tower.
FaceCrops = tuple[Image, ...]
Batches = tuple[npt.NDArray[np.uint8], ...]


class ModelError(RuntimeError):
    """A model file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Scored:
    """One model run: per face its embedding, its pair scores against the gallery rows and, when
    the model carries a cohort, the mean and spread of its k highest log-odds against the cohort
    (N x 2): how high this face scores against strangers, whoever it is."""

    embeddings: Floats
    scores: Floats
    cohort: Floats | None = None

    def rows(self, start: int, stop: int) -> Scored:
        return Scored(self.embeddings[start:stop], self.scores[start:stop],
                      None if self.cohort is None else self.cohort[start:stop])


@dataclass(frozen=True)
class Tower:
    """One embedding network's input: how its faces are cut and normalised, and its width."""

    input_size: tuple[int, int]
    color_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_margin: float
    alignment: str  # accessd.align.CropSpec.method; "box" for models exported before it existed
    embedding_size: int

    @classmethod
    def parse(cls, d: dict[str, Any], embedding_size: int, where: str) -> Tower:
        t = cls(
            input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
            color_order=str(d["color_order"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            crop_margin=float(d["crop_margin"]),
            alignment=str(d.get("alignment", "box")),
            embedding_size=embedding_size,
        )
        if t.color_order not in ("RGB", "BGR") or len(t.mean) != 3 or len(t.std) != 3 or 0.0 in t.std:
            raise ModelError(f"{where}: metadata {CONTRACT_KEY} has an invalid colour order or normalisation")
        if t.alignment not in METHODS:
            raise ModelError(f"{where}: metadata {CONTRACT_KEY} has an unknown alignment {t.alignment!r}")
        return t

    @property
    def crop(self) -> CropSpec:
        return CropSpec(self.input_size[0], self.crop_margin, self.alignment)


@dataclass(frozen=True)
class Contract:
    """What a model expects and suggests, as written into its metadata at export.

    The first tower's input is described at the top level (as single-tower models always
    were); a fused model adds `second` (its second tower) and `cascade_gate`.
    `embedding_size` is the width of a gallery row: both towers' embeddings side by side.
    """

    towers: tuple[Tower, ...]
    embedding_size: int
    architecture: str
    detection_threshold: float
    verification_threshold: float
    weights_sha256: str
    # The second tower runs only on faces whose best first-tower score reaches this; below
    # it no face can be granted (export proves it), so nothing is lost but work.
    cascade_gate: float
    raw: dict[str, Any]
    # A fused model may carry a cohort of training strangers every face is also scored against
    # (accessd/decide.py, the cohort check); this is the check's default threshold, None without one.
    cohort_threshold: float | None = None

    @classmethod
    def parse(cls, text: str, where: str) -> Contract:
        try:
            d = json.loads(text)
            width = int(d["embedding_size"])
            second = d.get("second")
            towers = [Tower.parse(d, width - (int(second["embedding_size"]) if second else 0), where)]
            if second is not None:
                towers.append(Tower.parse(second, int(second["embedding_size"]), where))
            c = cls(
                towers=tuple(towers),
                embedding_size=width,
                architecture=str(d["architecture"]),
                detection_threshold=float(d["detection_threshold"]),
                verification_threshold=float(d["verification_threshold"]),
                weights_sha256=str(d["weights_sha256"]),
                cascade_gate=float(d.get("cascade_gate", ALWAYS)),
                raw=d,
                cohort_threshold=float(d["cohort"]["threshold"]) if "cohort" in d else None,
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"{where}: metadata {CONTRACT_KEY} is incomplete or malformed ({exc!r})") from exc
        if any(t.embedding_size <= 0 for t in c.towers):
            raise ModelError(f"{where}: metadata {CONTRACT_KEY} gives a tower no embedding width")
        return c

    @property
    def input_size(self) -> tuple[int, int]:
        return self.towers[0].input_size

    @property
    def crops(self) -> tuple[CropSpec, ...]:
        """How faces must be cut for this model: one crop per tower."""
        return tuple(t.crop for t in self.towers)


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
    """One ONNX Runtime session: embeddings of face crops and their scores against a gallery.

    A fused model has two towers; the second runs only on faces whose best first-tower
    score reaches `gate` (the contract's; set it to ALWAYS to run both on every face).
    """

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
        self.gate = self.contract.cascade_gate
        log.info(
            "model %s (%s, %s -> %d-d) on %s", path.name, self.contract.architecture,
            " + ".join(f"{t.input_size[0]}x{t.input_size[1]}" for t in self.contract.towers),
            self.contract.embedding_size, self.provider,
        )
        self._norms = [(np.asarray(t.mean, np.float32), 1.0 / np.asarray(t.std, np.float32))
                       for t in self.contract.towers]
        # The first run allocates buffers and picks kernels (hundreds of ms on
        # CUDA); doing it now keeps that cost off the first person at the door.
        self.embed(tuple(np.zeros((1, *t.input_size, 3), np.uint8) for t in self.contract.towers))

    def _check_graph(self) -> None:
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        wanted = INPUTS + (SECOND_INPUTS if len(self.contract.towers) > 1 else ())
        expected = OUTPUTS + ((COHORT_OUTPUT,) if self.contract.cohort_threshold is not None else ())
        if set(wanted) != inputs.keys() or set(expected) - outputs:
            raise ModelError(
                f"model {self.path}: expected inputs {wanted} and outputs {expected}, "
                f"got {sorted(inputs)} and {sorted(outputs)}"
            )
        self._outputs = list(expected)
        for name, tower in zip(("image", "image2"), self.contract.towers, strict=False):
            h, w = tower.input_size
            shape = inputs[name]
            if len(shape) != 4 or list(shape[1:]) != [h, w, 3]:
                raise ModelError(
                    f"model {self.path}: input {name!r} has shape {shape}, metadata says [N, {h}, {w}, 3]"
                )
        if list(inputs["gallery"][1:]) != [self.contract.embedding_size]:
            raise ModelError(f"model {self.path}: input 'gallery' shape {inputs['gallery']} "
                             f"disagrees with embedding_size {self.contract.embedding_size}")

    @property
    def input_size(self) -> int:
        return self.contract.input_size[0]

    def batches(self, crops: Batches | npt.NDArray[np.uint8]) -> Batches:
        """Crops as one batch per tower; a bare array is the one batch of a one-tower model."""
        out = (crops,) if isinstance(crops, np.ndarray) else tuple(crops)
        if len(out) != len(self.contract.towers):
            raise ModelError(f"model {self.path}: needs {len(self.contract.towers)} crops per face, got {len(out)}")
        return out

    def preprocess(self, crops: npt.NDArray[np.uint8], tower: int = 0) -> Floats:
        """RGB uint8 crops -> the tower's normalised float input."""
        mean, inv_std = self._norms[tower]
        x = crops.astype(np.float32)
        if self.contract.towers[tower].color_order == "BGR":
            x = x[..., ::-1]
        return np.ascontiguousarray((x - mean) * inv_std, dtype=np.float32)

    def embed_and_score(self, crops: Batches | npt.NDArray[np.uint8], gallery: Floats,
                        gate: float | None = None) -> tuple[Floats, Floats]:
        """Embeddings of N faces and their N x M pair scores against M gallery rows, in one run.

        A fused model's second-tower columns are zero when the cascade left it out.
        """
        run = self.score(crops, gallery, gate)
        return run.embeddings, run.scores

    def score(self, crops: Batches | npt.NDArray[np.uint8], gallery: Floats, gate: float | None = None) -> Scored:
        """`embed_and_score`, with the faces' cohort statistics when the model has a cohort."""
        batches = self.batches(crops)
        n = len(batches[0])
        empty = len(gallery) == 0
        if empty:
            gallery = np.zeros((1, self.contract.embedding_size), np.float32)
        feeds = {"image": self.preprocess(batches[0], 0), "gallery": np.ascontiguousarray(gallery, np.float32)}
        if len(batches) > 1:
            feeds["image2"] = self.preprocess(batches[1], 1)
            feeds["gate"] = np.asarray(self.gate if gate is None else gate, np.float32)
        emb, scores, *cohort = self._session.run(self._outputs, feeds)
        return Scored(emb, np.zeros((n, 0), np.float32) if empty else scores, cohort[0] if cohort else None)

    def embed(self, crops: Batches | npt.NDArray[np.uint8], batch: int = 64) -> Floats:
        """Gallery rows: every tower's embedding, whatever the cascade would do."""
        batches = self.batches(crops)
        parts = [self.embed_and_score(tuple(b[i: i + batch] for b in batches), np.zeros((0, 0), np.float32),
                                      gate=ALWAYS)[0]
                 for i in range(0, len(batches[0]), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.contract.embedding_size), np.float32)

    def score_pair(self, a: FaceCrops | Image, b: FaceCrops | Image) -> float:
        """Score of face a against face b (crops of one face each), with every tower."""
        one = (a,) if isinstance(a, np.ndarray) else a
        two = (b,) if isinstance(b, np.ndarray) else b
        emb_b = self.embed(tuple(c[None] for c in two))
        _, scores = self.embed_and_score(tuple(c[None] for c in one), emb_b, gate=ALWAYS)
        return float(scores[0, 0])


def stack(faces: Sequence[FaceCrops]) -> Batches:
    """Per-face crop tuples -> one batch per tower."""
    return tuple(np.stack(parts) for parts in zip(*faces, strict=True))
