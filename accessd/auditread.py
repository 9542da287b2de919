"""Reading the audit log newest first, a block at a time from the end.

The console lists the latest decisions; parsing a whole 50 MB log per request
(holding the GIL against the frame loop) to show fifty of them was the cost.
Reading backwards stops as soon as the page is full.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 64 * 1024


def newest_first(path: Path, block: int = BLOCK) -> Iterator[dict[str, Any]]:
    """The records of `path`, last line first; lines that do not parse (one being written) are skipped."""
    try:
        f = path.open("rb")
    except OSError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        tail = b""  # the start of a line whose beginning lies in an earlier block
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start) + tail
            end = start
            lines = chunk.split(b"\n")
            tail = lines.pop(0) if start > 0 else b""
            for line in reversed(lines):
                row = _parse(line)
                if row is not None:
                    yield row
        row = _parse(tail)
        if row is not None:
            yield row


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None
