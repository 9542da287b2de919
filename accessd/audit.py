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
        self.path = path
        self.snapshots_dir = snapshots_dir
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if snapshots_dir is not None:
                snapshots_dir.mkdir(parents=True, exist_ok=True)
            self._fd = self._open()
        except OSError as exc:
            raise AuditError(f"audit log {path}: {exc.strerror or exc}") from exc

    @classmethod
    def from_config(cls, config: AuditConfig) -> AuditLog:
        return cls(config.path, config.snapshots_dir, config.max_bytes, config.keep)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _rotate_if_needed(self, incoming: int) -> None:
        """audit.jsonl -> .1 -> .2 ...; whole records only, the oldest beyond `keep` dropped."""
        if not self.max_bytes or not self.path.is_file():
            return
        size = os.fstat(self._fd).st_size
        if size == 0 or size + incoming <= self.max_bytes:
            return
        os.close(self._fd)
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fd = self._open()

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
        record = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **decision.to_record()}
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        with self._lock:
            try:
                self._rotate_if_needed(len(line))
                written = os.write(self._fd, line)
                if written != len(line):
                    raise AuditError(f"audit log {self.path}: short write ({written} of {len(line)} bytes)")
                os.fsync(self._fd)
            except OSError as exc:
                raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from exc
        return record

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
