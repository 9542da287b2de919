"""detect -> align -> embed -> score for one image: shared by the daemon, `verify` and `bench`."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from accessd.align import crop_face, largest
from accessd.batcher import Batcher, Run, model_run
from accessd.config import Config
from accessd.decide import Thresholds, score_faces
from accessd.detector import FaceDetector
from accessd.gallery import EmbeddingCache, Gallery, cache_key, load_gallery, single_face
from accessd.imageio import ImageError, read_image
from accessd.instrument import picture_frame
from accessd.landmarks import FaceMesh
from accessd.liveness import eye_aspect_ratio
from accessd.model import FaceCrops, ModelError, SiameseModel, stack
from accessd.provision import model_path
from accessd.types import Face, FaceResult, Floats, Image

log = logging.getLogger(__name__)

MESH_PRESENCE = 0.5  # below this the mesh doubts it sees a face: its eye points are not used


@dataclass
class FrameAnalysis:
    faces: list[Face]
    crops: list[FaceCrops]  # per face, one crop per model tower
    results: list[FaceResult]
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: detect, embed
    scores: Floats | None = None  # faces x gallery photos pair scores (None without faces)
    template_scores: Floats | None = None  # faces x people: scores against each person's template
    negative_scores: Floats | None = None  # faces x faces marked "not this person" (None without any)
    cohort: Floats | None = None  # faces x 2: the model's cohort statistics (None without a cohort)


class Pipeline:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = SiameseModel(config.model.path, config.model.providers, config.model.threads)
        self.detector = FaceDetector(
            model_path(config.detector.models_dir, config.detector.model), config.detector.min_confidence
        )
        self.thresholds = self.thresholds_for(config)
        # MediaPipe graphs are not documented as safe for concurrent calls, and galleries
        # are rebuilt on a worker thread while frames are analysed: one detector each.
        self._enrol_detector: FaceDetector | None = None
        self._side_detector: FaceDetector | None = None  # the console's verify, one call at a time
        # Doors run on threads of their own (accessd/daemon.py): a detector each (MediaPipe's keeps to
        # one core: 21 ms a 640x480 frame here alone, 12 ms each with two side by side on two cores),
        # and one model run for the faces of all doors at a time (the batcher).
        self._door_detectors: dict[str, FaceDetector] = {}
        self._door_lock = threading.Lock()
        self._batcher: Batcher | None = None
        self._side_lock = threading.Lock()
        live = config.liveness
        # One thread: a 192 px crop gains nothing from more, and a second spinning thread pool
        # beside the face model's only takes cores from it.
        self.mesh = FaceMesh(live.mesh_model, threads=1) if live.blink else None
        self._cache = EmbeddingCache(
            config.state_dir,
            cache_key(self.model.sha256, self.detector.model_path.name, config.detector.min_confidence),
        )

    def thresholds_for(self, config: Config) -> Thresholds:
        """`config`'s decision thresholds with this model's defaults filled in.

        Raises ModelError when the config names a threshold this model cannot apply (a cohort
        threshold for a model without a cohort): a reload checks it before anything is swapped.
        """
        d, c = config.decision, self.model.contract
        cohort = None
        if d.cohort_check:
            if c.cohort_threshold is None:
                if d.cohort_threshold is not None:
                    raise ModelError(f"model {self.model.path}: has no cohort, so decision.cohort_threshold "
                                     f"{d.cohort_threshold} cannot apply (set decision.cohort_check: false)")
                log.info("model %s has no cohort: the cohort check is off", self.model.path.name)
            else:
                cohort = d.cohort_threshold if d.cohort_threshold is not None else c.cohort_threshold
        return Thresholds(
            detection=d.detection_threshold if d.detection_threshold is not None else c.detection_threshold,
            verification=d.verification_threshold,
            margin=d.margin,
            score_margin=d.score_margin,
            template=d.template_threshold,
            cohort=cohort,
        )

    def retune(self, config: Config) -> None:
        """Take a reloaded config's thresholds (and its other keys) when the model and detector stay:
        the pipeline is reused, and its thresholds were once left as they were at start-up."""
        self.config, self.thresholds = config, self.thresholds_for(config)

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

    def analyse(self, image: Image, gallery: Gallery, with_templates: bool | None = None) -> FrameAnalysis:
        """Faces, crops and results for one frame; template scores when the template check is on
        (or `with_templates`: door_eval sweeps the check's threshold). One caller at a time."""
        return self._analyse(image, gallery, self.detector, model_run(self.model.score), with_templates)

    def analyse_at(self, door: str, image: Image, gallery: Gallery) -> FrameAnalysis:
        """`analyse` on a door's own thread: its own detector, and its faces scored in a model run
        shared with the other doors that have faces at the same moment (accessd/batcher.py)."""
        with self._door_lock:
            if self._batcher is None:
                self._batcher = Batcher(model_run(self.model.score))
            detector = self._door_detectors.get(door)
            if detector is None:
                detector = self._door_detectors[door] = FaceDetector(self.detector.model_path,
                                                                     self.config.detector.min_confidence)
        return self._analyse(image, gallery, detector, self._batcher.score, None)

    def _analyse(self, image: Image, gallery: Gallery, detector: FaceDetector, score: Run,
                 with_templates: bool | None) -> FrameAnalysis:
        t0 = time.perf_counter()
        faces = self.find_faces(image, detector)
        t1 = time.perf_counter()
        if not faces:
            return FrameAnalysis([], [], [], {"detect": t1 - t0})
        crops = [self.crop(image, f) for f in faces]
        # All faces of the frame in one run, scored against every photo and, when the
        # template check is on, every person's template.
        m, p, n = len(gallery), len(gallery.people), len(gallery.negative_of)
        if with_templates is None:
            with_templates = self.thresholds.template is not None
        if with_templates:
            targets = gallery.photos_and_templates
        else:
            targets = gallery.photos_and_negatives if n else gallery.embeddings
        run = score(crops, targets)
        both = run.scores
        scores, templates = both[:, :m], (both[:, m:m + p] if with_templates else None)
        negatives = both[:, both.shape[1] - n:] if n else None
        results = score_faces(faces, scores, gallery, self.thresholds, templates, negatives, run.cohort)
        t2 = time.perf_counter()
        seconds = {"detect": t1 - t0, "embed": t2 - t1}
        if any(r.candidate is not None for r in results) and (self.mesh is not None or self.config.liveness.instrument):
            results = self.liveness_signals(image, results)
            seconds["liveness"] = time.perf_counter() - t2
        return FrameAnalysis(faces, crops, results, seconds, scores, templates, negatives, run.cohort)

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
        with self._door_lock:
            if self._batcher is not None:
                self._batcher.close()
            for detector in self._door_detectors.values():
                detector.close()
        self.detector.close()
        if self._enrol_detector is not None:
            self._enrol_detector.close()
        with self._side_lock:
            if self._side_detector is not None:
                self._side_detector.close()
