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
import dataclasses
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from accessd.audit import AuditLog
from accessd.codes import CodeError, hash_code
from accessd.gallery import NEGATIVES_DIR
from accessd.imageio import IMAGE_SUFFIXES, decode_image
from accessd.personfile import RULES_FILE, parse_rules, read_rules, rules_data, write_rules
from accessd.rules import PersonRules, RulesError
from accessd.statefile import write_atomic
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
    # add_photo, enrol_from_snapshot, delete_photo, delete_person, set_rules, set_code, remove_code,
    # visitor_pass, not_this_person
    action: str
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

    def rules(self, person: str) -> PersonRules:
        """The rules in the person's file now (the defaults without one); EnrolmentError when unreadable."""
        folder = self._person_dir(person)
        if not folder.is_dir():
            raise EnrolmentError(f"person {person!r}: not found", 404)
        path = folder / RULES_FILE
        if not path.exists():
            return PersonRules()
        try:
            return read_rules(path)
        except RulesError as exc:
            raise EnrolmentError(str(exc).replace(str(self.root) + "/", ""), 422) from exc

    def set_rules(self, person: str, data: object, client: str, action: str = "set_rules") -> PersonRules:
        """Replace a person's rules (not their code) from the console's form; refused naming the key."""
        folder = self._person_dir(person)
        if not folder.is_dir():
            raise EnrolmentError(f"person {person!r}: not found", 404)
        if isinstance(data, dict) and "code_hash" in data:
            raise EnrolmentError("code_hash: set the code itself (PUT .../code); its hash is made here", 400)
        try:
            new = parse_rules(data, RULES_FILE)
        except RulesError as exc:
            raise EnrolmentError(str(exc), 422) from exc
        try:
            old = self.rules(person)
        except EnrolmentError:
            old = PersonRules()  # a broken file is replaced whole
        rules = PersonRules(new.name, new.windows, new.valid_from, new.valid_until, new.doors, new.second_factor,
                            old.code_hash)
        change = Change(action, person, None, client)
        self._record(change, rules=rules_data(dataclasses.replace(rules, code_hash=None)))
        with self._failure_recorded(change, folder / RULES_FILE):
            write_rules(folder, rules)
        log.info("console: %s set the rules of %s", client, person)
        return rules

    def set_code(self, person: str, code: str | None, client: str) -> None:
        """Set (or with None, remove) a person's second-factor code; only its salted hash is written."""
        folder = self._person_dir(person)
        if not folder.is_dir():
            raise EnrolmentError(f"person {person!r}: not found", 404)
        try:
            code_hash = hash_code(code) if code is not None else None
        except CodeError as exc:
            raise EnrolmentError(str(exc), 422) from exc
        old = self.rules(person)
        change = Change("set_code" if code is not None else "remove_code", person, None, client)
        self._record(change)  # never the code, nor its hash
        with self._failure_recorded(change, folder / RULES_FILE):
            write_rules(folder, dataclasses.replace(old, code_hash=code_hash))
        log.info("console: %s %s the code of %s", client, "set" if code else "removed", person)

    def visitor_pass(self, person: str, snapshot_id: str, data: bytes, valid_until: object, client: str) -> str:
        """Enrol a refused face from its snapshot as `person`, with a pass that ends at `valid_until`.

        The rules are written first (a folder that exists without photos grants no one), then the photo;
        a new person only, so a pass never shortens or widens someone already enrolled by accident.
        """
        folder = self._person_dir(person)
        if folder.exists():
            raise EnrolmentError(f"person {person!r}: already enrolled; edit their rules instead", 409)
        try:
            rules = parse_rules({"valid_until": valid_until}, "visitor pass")
        except RulesError as exc:
            raise EnrolmentError(str(exc), 422) from exc
        image = decode_image(data, f"{snapshot_id}.jpg")
        problem = self._problem(image)
        if problem is not None:
            raise EnrolmentError(f"snapshot {snapshot_id}: {problem}", 422)
        change = Change("visitor_pass", person, None, client)
        self._record(change, valid_until=str(valid_until), snapshot=snapshot_id)
        with self._failure_recorded(change, folder):
            folder.mkdir(parents=True, exist_ok=False)
            write_rules(folder, rules)
        return self.add_photo(person, f"{snapshot_id}.jpg", data, client, "enrol_from_snapshot")

    def not_this_person(self, person: str, snapshot_id: str, data: bytes, client: str) -> str:
        """Keep a decision's face as one `person` is not (their negative example); audited first."""
        folder = self._person_dir(person)
        if not folder.is_dir():
            raise EnrolmentError(f"person {person!r}: not found", 404)
        check_name(snapshot_id, "snapshot")
        image = decode_image(data, f"{snapshot_id}.jpg")
        problem = self._problem(image)
        if problem is not None:
            raise EnrolmentError(f"snapshot {snapshot_id}: {problem}", 422)
        marked = folder / NEGATIVES_DIR
        if marked.is_symlink():
            raise EnrolmentError(f"person {person!r}: {NEGATIVES_DIR} is a symlink; refused", 403)
        name = f"{snapshot_id}.jpg"
        change = Change("not_this_person", person, name, client)
        self._record(change, snapshot=snapshot_id)
        with self._failure_recorded(change, marked / name):
            marked.mkdir(exist_ok=True)
            write_atomic(marked / name, data)
        log.info("console: %s marked snapshot %s as not %s", client, snapshot_id, person)
        return name

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
