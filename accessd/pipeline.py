"""detect -> align -> embed -> score for one image: shared by the daemon, `verify` and `bench`."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from accessd.align import crop_face, largest
from accessd.config import Config
from accessd.decide import Thresholds, score_faces
from accessd.detector import FaceDetector
from accessd.gallery import EmbeddingCache, Gallery, cache_key, load_gallery, single_face
from accessd.imageio import ImageError, read_image
from accessd.instrument import picture_frame
from accessd.landmarks import FaceMesh
from accessd.liveness import eye_aspect_ratio
from accessd.model import FaceCrops, SiameseModel, stack
from accessd.provision import model_path
from accessd.types import Face, FaceResult, Floats, Image

log = logging.getLogger(__name__)

T = TypeVar("T")
MESH_PRESENCE = 0.5  # below this the mesh doubts it sees a face: its eye points are not used


@dataclass
class FrameAnalysis:
    faces: list[Face]
    crops: list[FaceCrops]  # per face, one crop per model tower
    results: list[FaceResult]
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: detect, embed
    scores: Floats | None = None  # faces x gallery photos pair scores (None without faces)
    template_scores: Floats | None = None  # faces x people: scores against each person's template


class Pipeline:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = SiameseModel(config.model.path, config.model.providers, config.model.threads)
        self.detector = FaceDetector(
            model_path(config.detector.models_dir, config.detector.model), config.detector.min_confidence
        )
        c = self.model.contract
        d = config.decision
        self.thresholds = Thresholds(
            detection=d.detection_threshold if d.detection_threshold is not None else c.detection_threshold,
            verification=d.verification_threshold,
            margin=d.margin,
            score_margin=d.score_margin,
            template=d.template_threshold,
        )
        # MediaPipe graphs are not documented as safe for concurrent calls, and galleries
        # are rebuilt on a worker thread while frames are analysed: one detector each.
        self._enrol_detector: FaceDetector | None = None
        self._side_detector: FaceDetector | None = None  # the console's verify, one call at a time
        # Several doors: the frames of one turn are detected (and their verified faces checked for
        # liveness) side by side, one detector per frame slot; MediaPipe's detector keeps to one
        # core (21 ms a 640x480 frame here, 12 ms with two side by side on two cores).
        self._slot_detectors: list[FaceDetector] = []
        self._pool: ThreadPoolExecutor | None = None
        self._side_lock = threading.Lock()
        live = config.liveness
        # One thread: a 192 px crop gains nothing from more, and a second spinning thread pool
        # beside the face model's only takes cores from it.
        self.mesh = FaceMesh(live.mesh_model, threads=1) if live.blink else None
        self._cache = EmbeddingCache(
            config.state_dir,
            cache_key(self.model.sha256, self.detector.model_path.name, config.detector.min_confidence),
        )

    def crop(self, image: Image, face: Face) -> FaceCrops:
        """The face cut out for each of the model's towers."""
        return tuple(crop_face(image, face, spec) for spec in self.model.contract.crops)

    def load_gallery(self, root: Path | None = None, cancel: threading.Event | None = None) -> Gallery:
        """Safe beside `analyse` on another thread: enrolment has its own detector."""
        if self._enrol_detector is None:
            self._enrol_detector = FaceDetector(self.detector.model_path, self.config.detector.min_confidence)
        return load_gallery(
            root or self.config.gallery.dir,
            self.config.gallery.default_person,
            self._enrol_detector.detect,
            self.model.embed,
            self.model.contract.crops,
            self._cache,
            self.model.contract.embedding_size,
            cancel,
        )

    def find_faces(self, image: Image, detector: FaceDetector | None = None) -> list[Face]:
        """Faces big enough to verify, largest first, at most detector.max_faces."""
        cfg = self.config.detector
        found = (detector or self.detector).detect(image)
        faces = [f for f in found if min(f.width, f.height) >= cfg.min_face_px]
        return sorted(faces, key=lambda f: f.area, reverse=True)[: cfg.max_faces]

    def _side_by_side(self, fn: Callable[..., T], *columns: list[Any]) -> list[T]:
        """`fn` over the rows of `columns`, on the pool when there is more than one row."""
        if len(columns[0]) <= 1:
            return [fn(*row) for row in zip(*columns, strict=True)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="frame")
        return list(self._pool.map(fn, *columns))

    def _detect(self, detector: FaceDetector, image: Image) -> FrameAnalysis:
        t0 = time.perf_counter()
        faces = self.find_faces(image, detector)
        seconds = {"detect": time.perf_counter() - t0}
        return FrameAnalysis(faces, [self.crop(image, f) for f in faces], [], seconds)

    def analyse(self, image: Image, gallery: Gallery, with_templates: bool | None = None) -> FrameAnalysis:
        """Faces, crops and results for one frame; template scores when the template check is on
        (or `with_templates`: door_eval sweeps the check's threshold)."""
        return self.analyse_many([image], gallery, with_templates)[0]

    def analyse_many(self, images: list[Image], gallery: Gallery,
                     with_templates: bool | None = None) -> list[FrameAnalysis]:
        """`analyse` for the latest frame of several doors: the faces of all of them go through the
        model in one run (one ONNX Runtime call instead of one per door). `seconds["embed"]` is
        that shared run's, in every frame that had a face."""
        while len(self._slot_detectors) < len(images) - 1:
            self._slot_detectors.append(FaceDetector(self.detector.model_path, self.config.detector.min_confidence))
        detectors = [self.detector, *self._slot_detectors][: len(images)]
        analyses = self._side_by_side(self._detect, detectors, images)
        crops = [c for a in analyses for c in a.crops]
        if not crops:
            return analyses
        # Every face of every frame in one run, scored against every photo and, when the
        # template check is on, every person's template.
        t1 = time.perf_counter()
        m = len(gallery)
        if with_templates is None:
            with_templates = self.thresholds.template is not None
        targets = gallery.photos_and_templates if with_templates else gallery.embeddings
        _, both = self.model.embed_and_score(stack(crops), targets)
        embed_s = time.perf_counter() - t1
        row = 0
        for a in analyses:
            mine = both[row:row + len(a.faces)]
            row += len(a.faces)
            if a.faces:
                a.scores, a.template_scores = mine[:, :m], (mine[:, m:] if with_templates else None)
                a.results = score_faces(a.faces, a.scores, gallery, self.thresholds, a.template_scores)
                a.seconds["embed"] = embed_s
        verified = [(image, a) for image, a in zip(images, analyses, strict=True)
                    if any(r.candidate is not None for r in a.results)]
        if verified and (self.mesh is not None or self.config.liveness.instrument):
            self._side_by_side(self._liveness, [i for i, _ in verified], [a for _, a in verified])
        return analyses

    def _liveness(self, image: Image, analysis: FrameAnalysis) -> None:
        t0 = time.perf_counter()
        analysis.results = self.liveness_signals(image, analysis.results)
        analysis.seconds["liveness"] = time.perf_counter() - t0

    def liveness_signals(self, image: Image, results: list[FaceResult]) -> list[FaceResult]:
        """Verified faces with their eye aspect ratio (the face mesh) and the instrument check's finding.

        Only verified faces: nobody else can be granted, so nobody else needs proving live.
        """
        verified = [i for i, r in enumerate(results) if r.candidate is not None]
        marks = self.mesh.landmarks(image, [results[i].face for i in verified]) if self.mesh is not None else []
        out = list(results)
        for n, i in enumerate(verified):
            ear = None
            if marks and marks[n].presence >= MESH_PRESENCE:
                ear = eye_aspect_ratio(marks[n].points)
            framed = picture_frame(image, results[i].face) if self.config.liveness.instrument else None
            out[i] = replace(results[i], ear=ear, instrument=framed)
        return out

    def _side_detect(self, image: Image) -> list[Face]:
        """Faces found off the frame loop (console, enrolment check): its own detector, one call at a time."""
        with self._side_lock:
            if self._side_detector is None:
                self._side_detector = FaceDetector(self.detector.model_path, self.config.detector.min_confidence)
            return self._side_detector.detect(image)

    def enrolment_problem(self, image: Image) -> str | None:
        """Why a photo could not be enrolled (no face, several), or None; off the frame loop."""
        found = single_face(self._side_detect(image))
        return found if isinstance(found, str) else None

    def gallery_scores(self, gallery: Gallery) -> Floats:
        """M x M pair scores of the gallery's photos against each other (for the enrolment check).

        Each photo is read, detected and cropped again (the gallery keeps only
        embeddings); a photo that no longer reads scores 0 against everything.
        """
        rows = np.zeros((len(gallery), len(gallery)), np.float32)
        for i, photo in enumerate(gallery.photos):
            try:
                image = read_image(photo.path)
            except ImageError:
                continue
            face = single_face(self._side_detect(image))
            if isinstance(face, str):
                continue
            _, scores = self.model.embed_and_score(stack([self.crop(image, face)]), gallery.embeddings)
            rows[i] = scores[0]
        return rows

    def compare(self, a: Image, b: Image) -> float:
        """The pair score of two photos' largest faces, off the frame loop (its own detector).

        Raises ImageError naming the photo ("photo a" or "photo b") that shows no face.
        """
        crops = []
        for name, image in (("photo a", a), ("photo b", b)):
            face = largest(self._side_detect(image))
            if face is None:
                raise ImageError(f"{name}: no face found")
            crops.append(self.crop(image, face))
        return self.model.score_pair(crops[0], crops[1])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for detector in self._slot_detectors:
            detector.close()
        self.detector.close()
        if self._enrol_detector is not None:
            self._enrol_detector.close()
        with self._side_lock:
            if self._side_detector is not None:
                self._side_detector.close()
