"""Files written whole or not at all (a crash mid-write leaves the old one): small JSON state files in
state_dir, and people's rules files and marked faces in the gallery."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path


def write_json(path: Path, data: object) -> None:
    """Replace `path` with `data` as JSON atomically; OSError when it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data).encode())


def write_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, all or nothing: a hidden temporary file (the watcher and scanner skip it),
    fsynced, renamed over the old one, and the folder fsynced so the rename itself lasts."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
