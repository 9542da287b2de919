"""Detect, align and cache face crops for a folder of identity photos.

Uses the daemon's own detector and `accessd.align`, so the model trains on
exactly the crops it will see at the door. The work is done once per
(detector, crop spec) and kept in an .npz cache; a teacher's embeddings
(train-time only, see `train.teacher`) are computed in the same pass.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from accessd.align import CropSpec, crop_face, nearest_to_center
from accessd.detector import FaceDetector
from accessd.imageio import IMAGE_SUFFIXES, ImageError, read_image

log = logging.getLogger(__name__)


@dataclass
class FaceSet:
    """Aligned crops with the identity and relative path of each source photo."""

    crops: npt.NDArray[np.uint8]  # N x S x S x 3 RGB
    people: list[str]
    paths: list[str]  # relative to the data root, e.g. "Name/Name_0001.jpg"
    teacher: npt.NDArray[np.float32] | None = None  # N x D, when prepared with a teacher

    def __len__(self) -> int:
        return len(self.paths)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    def subset(self, keep: Sequence[int]) -> FaceSet:
        idx = np.asarray(keep, dtype=np.int64)
        return FaceSet(
            crops=self.crops[idx],
            people=[self.people[i] for i in idx],
            paths=[self.paths[i] for i in idx],
            teacher=None if self.teacher is None else self.teacher[idx],
        )


def list_identity_photos(root: Path, only: Iterable[str] | None = None) -> list[str]:
    """Relative paths `<person>/<photo>` under an identity-folder root, sorted."""
    wanted = set(only) if only is not None else None
    out = []
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if wanted is not None and person_dir.name not in wanted:
            continue
        for photo in sorted(person_dir.iterdir()):
            if photo.suffix.lower() in IMAGE_SUFFIXES:
                out.append(f"{person_dir.name}/{photo.name}")
    return out


_worker: dict[str, object] = {}


def _init_worker(detector_model: str, min_confidence: float, teacher: bool) -> None:
    _worker["detector"] = FaceDetector(Path(detector_model), min_confidence)
    if teacher:
        from train.teacher import DlibTeacher

        _worker["teacher"] = DlibTeacher()


def _process(job: tuple[str, str, CropSpec, bool]) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    root, rel, spec, want_teacher = job
    detector = _worker["detector"]
    assert isinstance(detector, FaceDetector)
    try:
        image = read_image(Path(root) / rel)
    except ImageError as exc:
        log.warning("%s", exc)
        return rel, None, None
    face = nearest_to_center(detector.detect(image), image.shape[1], image.shape[0])
    if face is None:
        return rel, None, None
    crop = crop_face(image, face, spec)
    emb = None
    if want_teacher:
        from train.teacher import DlibTeacher

        teacher = _worker["teacher"]
        assert isinstance(teacher, DlibTeacher)
        emb = teacher.embed(image, face)
    return rel, crop, emb


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def crops_cache_path(cache_dir: Path, root: Path, detector_model: Path, spec: CropSpec) -> Path:
    # A "box" spec keeps the digest it had before alignments had names, so old caches stay valid.
    parts: tuple[object, ...] = (root.resolve(), detector_model.name, spec.size, spec.margin)
    if spec.method != "box":
        parts += (spec.method,)
    return cache_dir / f"faces-{root.name}-{spec.size}-{_digest(*parts)}.npz"


def teacher_cache_path(cache_dir: Path, root: Path, detector_model: Path) -> Path:
    # The teacher sees the original photo and the detector's box: independent of crop size.
    return cache_dir / f"teacher-{root.name}-{_digest(root.resolve(), detector_model.name)}.npz"


def _load(path: Path, key: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        values = data[key]  # each data[...] access re-reads the member: read it once
        return dict(zip(data["paths"].tolist(), values, strict=True))


def _save(path: Path, entries: dict[str, np.ndarray], key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rels = sorted(entries)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, paths=np.array(rels), **{key: np.stack([entries[r] for r in rels])})
    tmp.replace(path)


def prepare_faces(
    root: Path,
    detector_model: Path,
    spec: CropSpec,
    cache_dir: Path,
    teacher: bool = False,
    min_confidence: float = 0.5,
    workers: int = 2,
    only_people: Iterable[str] | None = None,
) -> FaceSet:
    """Crops of every photo under `root` (or of `only_people`), from cache when possible.

    Photos with no detectable face are left out and counted in the log.
    """
    from tqdm import tqdm

    wanted = list_identity_photos(root, only_people)
    crops_path = crops_cache_path(cache_dir, root, detector_model, spec)
    teacher_path = teacher_cache_path(cache_dir, root, detector_model)
    crops = _load(crops_path, "crops")
    embeddings = _load(teacher_path, "teacher") if teacher else {}
    # Photos known to hold no detectable face, so a reload does not retry them.
    faceless_path = crops_path.with_suffix(".faceless.txt")
    faceless = set(faceless_path.read_text().split("\n")) if faceless_path.is_file() else set()
    missing = [rel for rel in wanted if rel in faceless]
    todo = [rel for rel in wanted if rel not in faceless and (rel not in crops or (teacher and rel not in embeddings))]
    if todo:
        log.info("detecting and aligning %d photos under %s", len(todo), root)
        jobs = [(str(root), rel, spec, teacher and rel not in embeddings) for rel in todo]
        ctx = mp.get_context("spawn")  # MediaPipe and TensorFlow do not survive fork
        with ctx.Pool(
            workers, initializer=_init_worker, initargs=(str(detector_model), min_confidence, teacher)
        ) as pool:
            for rel, crop, emb in tqdm(pool.imap(_process, jobs, chunksize=16), total=len(jobs), desc="faces"):
                if crop is None:
                    missing.append(rel)
                    continue
                crops[rel] = crop
                if emb is not None:
                    embeddings[rel] = emb
        if crops:
            _save(crops_path, crops, "crops")
        faceless_path.write_text("\n".join(sorted(faceless | set(missing))))
        if teacher and embeddings:
            _save(teacher_path, embeddings, "teacher")
    if missing:
        log.warning("%d photos had no detectable face and are left out (e.g. %s)", len(missing), missing[:3])
    keep = [rel for rel in wanted if rel in crops]
    stacked = np.stack([crops[r] for r in keep]) if keep else np.zeros((0, spec.size, spec.size, 3), np.uint8)
    teach = np.stack([embeddings[r] for r in keep]).astype(np.float32) if teacher and keep else None
    return FaceSet(crops=stacked, people=[r.split("/")[0] for r in keep], paths=keep, teacher=teach)


def prepare_towers(root: Path, detector_model: Path, specs: Sequence[CropSpec], cache_dir: Path,
                   workers: int = 2, only_people: Iterable[str] | None = None) -> list[FaceSet]:
    """One face set per crop spec (a fused model's towers), each holding the same photos in the
    same order: those every spec's crop was found for."""
    wanted = list(only_people) if only_people is not None else None
    sets = [prepare_faces(root, detector_model, spec, cache_dir, workers=workers, only_people=wanted)
            for spec in specs]
    indexes = [s.index() for s in sets]
    common = [p for p in sets[0].paths if all(p in index for index in indexes[1:])]
    return [s.subset([index[p] for p in common]) for s, index in zip(sets, indexes, strict=True)]
