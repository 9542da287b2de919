"""MediaPipe's 468-point face mesh, run by ONNX Runtime. ONNX Runtime types never leave this module.

The model is MediaPipe's own (`export/face_mesh_to_onnx.py` converts it from
the pinned wheel and checks it against TFLite); its contract is in the ONNX
metadata and a model without it is refused. A face is cropped the way the
mesh expects (a square 1.5 x the detector's box, eyes level, 192 px), and the
points are mapped back into the frame's pixels, so liveness checks reason in
one coordinate system whatever the crop was.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from accessd.align import levelled
from accessd.types import Face, Image

log = logging.getLogger(__name__)

CONTRACT_KEY = "accessd.face_mesh"
INPUT = "input_1"
LANDMARKS = "conv2d_21"
PRESENCE = "conv2d_31"
SIZE = 192
SCALE = 1.5  # the crop's side, in box sides


class MeshError(RuntimeError):
    pass


@dataclass(frozen=True)
class Landmarks:
    """468 points (x, y in frame pixels; z in the same units, relative) and how sure the mesh is of a face."""

    points: npt.NDArray[np.float32]  # 468 x 3
    presence: float  # probability that the crop holds a face


def mesh_crop(image: Image, face: Face) -> tuple[Image, npt.NDArray[np.float64]]:
    """The mesh's input for `face` and the 2 x 3 affine map from frame to crop pixels."""
    matrix = levelled(face, max(face.width, face.height) * SCALE, SIZE)
    crop = cv2.warpAffine(image, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(crop, dtype=np.uint8), matrix


class FaceMesh:
    """One ONNX Runtime session for the mesh (CPU: 2.5 ms a face; the GPU gains nothing at batch 1)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own types, none of them OSError
            raise MeshError(f"face mesh {path}: ONNX Runtime cannot load it ({exc})") from exc
        raw = self._session.get_modelmeta().custom_metadata_map.get(CONTRACT_KEY)
        if raw is None:
            raise MeshError(f"face mesh {path}: no {CONTRACT_KEY} metadata (make it with export/face_mesh_to_onnx.py)")
        self.contract = json.loads(raw)
        if self.contract.get("input", {}).get("size") != SIZE:
            raise MeshError(f"face mesh {path}: input size {self.contract.get('input')} is not {SIZE}")
        self.path = path

    def landmarks(self, image: Image, faces: list[Face]) -> list[Landmarks]:
        """The mesh of each face, in frame pixels, in one run."""
        if not faces:
            return []
        crops, matrices = zip(*(mesh_crop(image, f) for f in faces), strict=True)
        batch = np.stack(crops).astype(np.float32) / 255.0
        points, presence = self._session.run([LANDMARKS, PRESENCE], {INPUT: batch})
        out = []
        for pts, logit, matrix in zip(points.reshape(len(faces), 468, 3), presence.reshape(-1), matrices,
                                      strict=True):
            inverse = cv2.invertAffineTransform(matrix)
            scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
            xy = pts[:, :2] @ inverse[:, :2].T + inverse[:, 2]
            frame_pts = np.concatenate([xy, pts[:, 2:] / scale], axis=1).astype(np.float32)
            out.append(Landmarks(frame_pts, float(1.0 / (1.0 + np.exp(-float(logit))))))
        return out
