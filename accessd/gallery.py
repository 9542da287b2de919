"""The enrolled gallery: `verification_images/<person>/*.jpg|png`, embedded once and cached.

Photos directly in the gallery folder belong to `gallery.default_person`.
Faces marked "not this person" in the console sit in a person's
`not-this-person/` sub-folder: embedded like photos, they are that person's
negative examples (a face closer to one of them than to the person's own
photos is not verified as the person, accessd/decide.py).
Each photo goes through the same detect -> align -> embed path as a live frame.
Embeddings are cached on disk keyed by the photo's content hash and a hash of
the model and detector, so a restart or a reload only embeds new photos, and a
new model invalidates everything. A photo that cannot be used is skipped with
one log line naming it; the rest of the gallery stays usable.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from accessd.align import CropSpec, crop_face
from accessd.imageio import IMAGE_SUFFIXES, ImageError, decode_image
from accessd.model import stack
from accessd.types import Face, Floats, Image

log = logging.getLogger(__name__)

# A second face this large relative to the largest makes a photo ambiguous;
# smaller ones (a poster, a passer-by far behind) are ignored.
AMBIGUOUS_FACE_AREA = 0.25


@dataclass(frozen=True)
class Photo:
    person: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class Gallery:
    """An immutable snapshot; the daemon swaps in a new one on reload."""

    embeddings: Floats  # M x D
    person_of: npt.NDArray[np.int64]  # M: index into `people`
    people: tuple[str, ...]
    photos: tuple[Photo, ...]
    skipped: tuple[Skipped, ...] = ()
    # Negative examples: faces marked "not this person", each of the person `negative_of` names.
    negatives: Floats = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    negative_of: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    negative_photos: tuple[Photo, ...] = ()

    @classmethod
    def empty(cls, dim: int) -> Gallery:
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), (), ())

    def __len__(self) -> int:
        return len(self.photos)

    @functools.cached_property
    def templates(self) -> Floats:
        """P x D: each person's mean photo embedding (a template), in `people` order."""
        if not self.people:
            return np.zeros((0, self.embeddings.shape[1]), np.float32)
        sums = np.zeros((len(self.people), self.embeddings.shape[1]), np.float64)
        np.add.at(sums, self.person_of, self.embeddings)
        counts = np.bincount(self.person_of, minlength=len(self.people))[:, None]
        return (sums / np.maximum(counts, 1)).astype(np.float32)

    @functools.cached_property
    def photos_and_templates(self) -> Floats:
        """(M + P + N) x D: what each face is scored against (photos, templates, negative examples),
        built once per gallery, not per frame."""
        return np.ascontiguousarray(np.concatenate([self.embeddings, self.templates, self.negative_rows]), np.float32)

    @functools.cached_property
    def photos_and_negatives(self) -> Floats:
        """(M + N) x D: photos and negative examples, when the template check is off."""
        return np.ascontiguousarray(np.concatenate([self.embeddings, self.negative_rows]), np.float32)

    @property
    def negative_rows(self) -> Floats:
        return self.negatives.reshape(len(self.negative_of), self.embeddings.shape[1])

    @functools.cached_property
    def photo_counts(self) -> npt.NDArray[np.float64]:
        """P: how many photos each person has, once per gallery rather than per face and frame."""
        return np.bincount(self.person_of, minlength=len(self.people)).astype(np.float64)

    def without(self, paths: frozenset[Path]) -> Gallery:
        """This gallery less the photos at `paths` (resolved): a revocation, in effect at once.

        People left with no photo are dropped. Cheap (array indexing, no embedding), so the
        frame loop can apply it between two frames.
        """
        keep = [i for i, p in enumerate(self.photos) if p.path.resolve() not in paths]
        keep_neg = [i for i, p in enumerate(self.negative_photos) if p.path.resolve() not in paths]
        if len(keep) == len(self.photos) and len(keep_neg) == len(self.negative_photos):
            return self
        photos = tuple(self.photos[i] for i in keep)
        people = tuple(sorted({p.person for p in photos}))
        index = {p: i for i, p in enumerate(people)}
        keep_neg = [i for i in keep_neg if self.negative_photos[i].person in index]
        negatives = tuple(self.negative_photos[i] for i in keep_neg)
        return Gallery(
            embeddings=self.embeddings[keep],
            person_of=np.asarray([index[p.person] for p in photos], np.int64),
            people=people,
            photos=photos,
            skipped=self.skipped,
            negatives=self.negative_rows[keep_neg],
            negative_of=np.asarray([index[p.person] for p in negatives], np.int64),
            negative_photos=negatives,
        )

    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.person_of, minlength=len(self.people))
        return {p: int(c) for p, c in zip(self.people, counts, strict=True)}


NEGATIVES_DIR = "not-this-person"


def scan(root: Path, default_person: str,
         negatives: list[tuple[str, Path]] | None = None) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """(person, photo path) for every image under `root`, and what was refused while scanning.

    Each person's negative examples (`<person>/not-this-person/*`) go into `negatives` when given.
    """
    found: list[tuple[str, Path]] = []
    refused: list[Skipped] = []
    if not root.is_dir():
        return found, [Skipped(root, "gallery folder does not exist")]
    real_root = root.resolve()

    def consider(person: str, path: Path, into: list[tuple[str, Path]] = found) -> None:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return
        resolved = path.resolve()
        if not resolved.is_relative_to(real_root):
            refused.append(Skipped(path, f"points outside the gallery ({resolved})"))
        elif resolved.is_file():
            into.append((person, path))

    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not entry.resolve().is_relative_to(real_root):
                refused.append(Skipped(entry, "folder points outside the gallery"))
                continue
            for photo in sorted(entry.iterdir()):
                if not photo.name.startswith("."):
                    consider(entry.name, photo)
            marked = entry / NEGATIVES_DIR
            if negatives is not None and marked.is_dir() and not marked.is_symlink():
                for photo in sorted(marked.iterdir()):
                    if not photo.name.startswith("."):
                        consider(entry.name, photo, negatives)
        else:
            consider(default_person, entry)
    return found, refused


def single_face(faces: list[Face]) -> Face | str:
    """The one face of an enrolment photo, or why the photo is refused."""
    if not faces:
        return "no face found"
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    if len(ordered) > 1 and ordered[1].area >= AMBIGUOUS_FACE_AREA * ordered[0].area:
        return f"{len(faces)} faces found; an enrolment photo must show one person"
    return ordered[0]


class EmbeddingCache:
    """One .npy per photo content hash, in a folder per (model, detector) key."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = root / "embeddings" / key
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, sha: str) -> Floats | None:
        path = self.dir / f"{sha}.npy"
        try:
            return np.asarray(np.load(path), dtype=np.float32)
        except (OSError, ValueError):
            return None

    def skipped(self, sha: str) -> str | None:
        """Why this photo content was refused before, so a restart does not detect it again."""
        try:
            return (self.dir / f"{sha}.skip").read_text(encoding="utf-8")
        except OSError:
            return None

    def put_skipped(self, sha: str, reason: str) -> None:
        self._write(self.dir / f"{sha}.skip", reason.encode())

    def put(self, sha: str, embedding: Floats) -> None:
        buffer = io.BytesIO()
        np.save(buffer, embedding.astype(np.float32))
        self._write(self.dir / f"{sha}.npy", buffer.getvalue())

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Write via a temporary file and rename, so a reader never sees half an entry."""
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)


# Faces per enrolment run. 8, not 16, since faceres runs on each crop and its mirror image:
# 16 faces (32 images at 224 px) raised the first start's peak with 1,000 photos from 654 to
# 868 MB (`python -m accessd.startup --runs 1`, docs/speed.md).
EMBED_BATCH = 8


class LoadCancelled(Exception):
    """The daemon is stopping; a half-built gallery is dropped."""


def cache_key(model_sha: str, detector_name: str, min_confidence: float) -> str:
    return hashlib.sha256(f"{model_sha}|{detector_name}|{min_confidence}".encode()).hexdigest()[:16]


def load_gallery(
    root: Path,
    default_person: str,
    detect: Callable[[Image], list[Face]],
    embed: Callable[[tuple[npt.NDArray[np.uint8], ...]], Floats],
    crops: tuple[CropSpec, ...],
    cache: EmbeddingCache | None,
    dim: int,
    cancel: threading.Event | None = None,
) -> Gallery:
    marked: list[tuple[str, Path]] = []
    found, skipped = scan(root, default_person, marked)
    log.info("gallery: loading %d photos from %s", len(found), root)
    for s in skipped:
        log.warning("gallery: skipping %s: %s", s.path, s.reason)
    photos: list[Photo] = []
    vectors: list[Floats | None] = []
    pending: list[tuple[int, tuple[Image, ...]]] = []
    for person, path in found + marked:
        if cancel is not None and cancel.is_set():
            raise LoadCancelled(f"gallery load of {root} cancelled")
        try:
            data = path.read_bytes()
        except OSError as exc:
            skipped.append(Skipped(path, f"cannot read ({exc.strerror or exc})"))
            log.warning("gallery: skipping %s: cannot read (%s)", path, exc.strerror or exc)
            continue
        sha = hashlib.sha256(data).hexdigest()
        cached = cache.get(sha) if cache else None
        if cached is not None and cached.shape != (dim,):
            # Written by another model with the same key (or damaged): embed again, never misread.
            log.warning("gallery: cached embedding of %s has shape %s, not (%d,): embedding it again",
                        path, cached.shape, dim)
            cached = None
        if cached is None:
            known = cache.skipped(sha) if cache else None
            if known is not None:
                face: Face | str = known
            else:
                try:
                    image = decode_image(data, str(path))
                    face = single_face(detect(image))
                except ImageError as exc:
                    face = str(exc).removeprefix(f"{path}: ")
                if isinstance(face, str) and cache:
                    cache.put_skipped(sha, face)
            if isinstance(face, str):
                skipped.append(Skipped(path, face))
                log.warning("gallery: skipping %s: %s", path, face)
                continue
            pending.append((len(photos), tuple(crop_face(image, face, spec) for spec in crops)))
        photos.append(Photo(person, path, sha))
        vectors.append(cached)
    # In small batches: ONNX Runtime's memory arena keeps the peak of the largest batch it
    # has run. Enrolling 476 photos in one batch left the daemon 162 MB larger for good;
    # in batches of 16, 36 MB (`python -m accessd.soak --seconds 60 --enrol 500`; see EMBED_BATCH).
    for start in range(0, len(pending), EMBED_BATCH):
        chunk = pending[start:start + EMBED_BATCH]
        for (i, _), vec in zip(chunk, embed(stack([crops_of for _, crops_of in chunk])), strict=True):
            vectors[i] = vec
            if cache:
                cache.put(photos[i].sha256, vec)
    # The negatives were read last: split them off (and drop those of a person with no photo).
    marked_paths = {p for _, p in marked}
    is_negative = [p.path in marked_paths for p in photos]
    own = [i for i, neg in enumerate(is_negative) if not neg]
    people = tuple(sorted({photos[i].person for i in own}))
    index = {p: i for i, p in enumerate(people)}
    neg = [i for i, n in enumerate(is_negative) if n and photos[i].person in index]
    embeddings = np.stack([vectors[i] for i in own]) if own else np.zeros((0, dim), np.float32)  # type: ignore[misc]
    negatives = np.stack([vectors[i] for i in neg]) if neg else np.zeros((0, dim), np.float32)  # type: ignore[misc]
    gallery = Gallery(
        embeddings=embeddings.astype(np.float32),
        person_of=np.asarray([index[photos[i].person] for i in own], np.int64),
        people=people,
        photos=tuple(photos[i] for i in own),
        skipped=tuple(skipped),
        negatives=negatives.astype(np.float32),
        negative_of=np.asarray([index[photos[i].person] for i in neg], np.int64),
        negative_photos=tuple(photos[i] for i in neg),
    )
    log.info("gallery: %d photos of %d people, %d marked not them (%d newly embedded, %d skipped)",
             len(own), len(people), len(neg), len(pending), len(skipped))
    return gallery
