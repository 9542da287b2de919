"""Changes to who may enter, made from the console: validated, written into the gallery folder, audited.

The console never builds a gallery itself: it writes or removes files under
`gallery.dir`, exactly as an operator dropping photos there would, and the
daemon's watcher and gallery code make the change live. Names are checked
before any path is built (no separators, no leading dot, no `..`), every path
is re-checked to lie inside the gallery after resolving, and symlinks are
refused, so a request can never read or write outside it. Uploads are decoded
with the gallery's own hardened decoder before they are written, so a
corrupt or oversized image is refused with a clear message instead of being
skipped later. Every change appends its own audit record first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from accessd.audit import AuditLog
from accessd.imageio import IMAGE_SUFFIXES, decode_image
from accessd.types import Image

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.,'()-]{0,79}$")


class EnrolmentError(ValueError):
    """A refused change; `status` is the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_name(value: str, what: str) -> str:
    """A person or photo name that is safe as one path component."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value or value != value.strip():
        raise EnrolmentError(f"{what} {value!r}: use letters, digits, spaces and _ . , ' ( ) - "
                             "(at most 80, not starting with a dot)")
    return value


@dataclass(frozen=True)
class Change:
    action: str  # add_photo, enrol_from_snapshot, delete_photo, delete_person
    person: str
    photo: str | None
    client: str


class Enrolment:
    """`gallery_dir` and `audit` are asked for on each change: a config reload may replace both."""

    def __init__(self, gallery_dir: Callable[[], Path], audit: Callable[[], AuditLog],
                 problem: Callable[[Image], str | None] = lambda _image: None,
                 revoke: Callable[[list[Path]], object] = lambda _paths: None) -> None:
        self._root = gallery_dir
        self._audit = audit
        self._problem = problem  # why a photo cannot be enrolled (the gallery's own face check), or None
        # Takes removed photos out of use before the door's next frame, not at the next rescan.
        self._revoke = revoke

    @property
    def root(self) -> Path:
        return self._root()

    def _person_dir(self, person: str) -> Path:
        folder = self.root / check_name(person, "person")
        if folder.is_symlink():
            raise EnrolmentError(f"person {person!r}: the folder is a symlink; refused", 403)
        if not folder.resolve().is_relative_to(self.root.resolve()):
            raise EnrolmentError(f"person {person!r}: outside the gallery", 403)
        return folder

    def add_photo(self, person: str, filename: str, data: bytes, client: str, action: str = "add_photo") -> str:
        """Decode-check and write an uploaded photo; the name it was stored under.

        `action` names the change in the audit log (`enrol_from_snapshot` for a door snapshot).
        """
        stem = Path(filename or "photo.jpg").stem
        suffix = Path(filename or "photo.jpg").suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise EnrolmentError(f"photo {filename!r}: not an image file name "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))})", 415)
        safe_stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "photo"
        image = decode_image(data, filename)  # raises ImageError naming the file: corrupt, non-image, too large
        problem = self._problem(image)
        if problem is not None:
            raise EnrolmentError(f"photo {filename!r}: {problem}", 422)
        name = f"{safe_stem}-{hashlib.sha256(data).hexdigest()[:8]}{suffix}"
        folder = self._person_dir(person)
        path = folder / name
        change = Change(action, person, name, client)
        self._record(change)
        tmp = folder / f".{name}.{os.getpid()}.tmp"  # hidden: the watcher and scanner skip it
        with self._failure_recorded(change, path):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
                tmp.replace(path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()  # no half-written file left behind
                raise
        log.info("console: %s added photo %s of %s", client, name, person)
        return name

    def delete_photo(self, person: str, photo: str, client: str) -> None:
        folder = self._person_dir(person)
        path = folder / check_name(photo, "photo")
        if path.is_symlink() or not path.is_file():
            raise EnrolmentError(f"photo {photo!r} of {person!r}: not found", 404)
        change = Change("delete_photo", person, photo, client)
        self._record(change)
        with self._failure_recorded(change, path):
            path.unlink()
        self._revoke([path])
        log.info("console: %s deleted photo %s of %s", client, photo, person)

    def delete_person(self, person: str, client: str) -> None:
        folder = self._person_dir(person)
        if not folder.is_dir():
            raise EnrolmentError(f"person {person!r}: not found", 404)
        change = Change("delete_person", person, None, client)
        self._record(change)
        photos = [p for p in folder.rglob("*") if p.is_file()]
        try:
            with self._failure_recorded(change, folder):
                shutil.rmtree(folder)
        finally:
            self._revoke([p for p in photos if not p.exists()])  # what is gone is out of use, even half-way
        log.info("console: %s removed %s", client, person)

    def photo_path(self, person: str, photo: str) -> Path:
        path = self._person_dir(person) / check_name(photo, "photo")
        if path.is_symlink() or not path.is_file():
            raise EnrolmentError(f"photo {photo!r} of {person!r}: not found", 404)
        return path

    def _record(self, change: Change, **outcome: object) -> None:
        """Audited before the change is made: a change that cannot be recorded is not made."""
        self._audit().append_record({"event": "enrolment", "action": change.action, "person": change.person,
                                     "photo": change.photo, "client": change.client, **outcome})

    @contextlib.contextmanager
    def _failure_recorded(self, change: Change, path: Path) -> Iterator[None]:
        """A change recorded as made that then fails gets a second record saying so, and a 500."""
        try:
            yield
        except OSError as exc:
            problem = f"{path}: {exc.strerror or exc}"
            log.error("console: %s of %s failed: %s", change.action, change.person, problem)
            try:
                self._record(change, result="failed", error=problem)
            except OSError:
                log.exception("console: the failure of %s could not be recorded either", change.action)
            raise EnrolmentError(f"{change.action} failed: {problem}", 500) from exc
