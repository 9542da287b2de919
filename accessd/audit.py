"""Append-only audit log: one JSON line per decision, on disk before any hook runs.

Each record is written with a single write(), flushed and fsynced, so a crash
or `kill -9` leaves at worst a missing last line, never a half-written one
mixed into the next. Snapshots (optional) are JPEGs of the face's crop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path

import cv2

from accessd.config import AuditConfig
from accessd.types import Decision, Image

log = logging.getLogger(__name__)


class AuditError(OSError):
    pass


class AuditLog:
    def __init__(self, path: Path, snapshots_dir: Path | None = None, max_bytes: int = 0, keep: int = 5) -> None:
        if keep < 1 or max_bytes < 0:
            raise ValueError(f"audit log {path}: keep must be at least 1 and max_bytes not negative "
                             f"(got keep={keep}, max_bytes={max_bytes})")
        self.path = path
        self.snapshots_dir = snapshots_dir
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        # None while the log cannot be opened (read-only disk, permissions, rotation that
        # failed half-way): every append retries, and until one succeeds decisions are
        # refused (the daemon withholds their actions) rather than the daemon stopping.
        self._fd: int | None = None
        try:
            self._ensure_open()
        except AuditError as exc:
            log.error("%s; decisions are withheld until it can be written", exc)
        if snapshots_dir is not None:
            try:
                snapshots_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.error("audit.snapshots_dir %s: %s; decisions are recorded without snapshots",
                          snapshots_dir, exc.strerror or exc)

    @classmethod
    def from_config(cls, config: AuditConfig) -> AuditLog:
        return cls(config.path, config.snapshots_dir, config.max_bytes, config.keep)

    def _ensure_open(self) -> int:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                created = not self.path.exists()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                if created:
                    # A new file's name lives in its folder: fsync that too, or a power cut
                    # can lose the whole file with the records fsynced into it.
                    try:
                        _fsync_dir(self.path.parent)
                    except OSError:
                        os.close(fd)
                        raise
                self._fd = fd
            except OSError as exc:
                raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from exc
        return self._fd

    def _rotate_if_needed(self, fd: int, incoming: int) -> None:
        """audit.jsonl -> .1 -> .2 ...; whole records only, the oldest beyond `keep` dropped."""
        if not self.max_bytes or not self.path.is_file():
            return
        size = os.fstat(fd).st_size
        if size == 0 or size + incoming <= self.max_bytes:
            return
        # Forget the descriptor before closing it: its number may be reused at once, and a
        # failure below must not leave us writing records into someone else's file.
        self._fd = None
        os.close(fd)
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        # `keep` is at least 1 (config refuses less): the current file is never deleted, only renamed.
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        _fsync_dir(self.path.parent)

    def snapshot(self, decision: Decision, crop: Image | None) -> str | None:
        if self.snapshots_dir is None or crop is None:
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        path = self.snapshots_dir / f"{stamp}-{decision.outcome.value}-f{decision.frame}.jpg"
        if not cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
            log.warning("could not write snapshot %s", path)
            return None
        return str(path)

    def append(self, decision: Decision) -> dict[str, object]:
        # A decision with a snapshot is named by it: the console fetches and enrols by this id.
        snapshot_id = Path(decision.snapshot).stem if decision.snapshot else None
        return self.append_record({"id": snapshot_id, **decision.to_record()})

    def append_record(self, fields: dict[str, object]) -> dict[str, object]:
        """Append one record (timestamped here), fsynced; AuditError when it cannot be."""
        record = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **fields}
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        with self._lock:
            try:
                self._rotate_if_needed(self._ensure_open(), len(line))
                fd = self._ensure_open()
                before = os.fstat(fd).st_size
                written = os.write(fd, line)
                if written != len(line):
                    # Cut the partial record off, so the next one does not start mid-line.
                    os.ftruncate(fd, before)
                    raise AuditError(f"audit log {self.path}: short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
            except AuditError:
                raise
            except OSError as exc:
                raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from exc
        return record

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
