"""Native libraries' start-up chatter, logged through accessd instead of printed.

MediaPipe (LiteRT, absl) writes straight to file descriptor 2, outside Python's
logging: 46 "Sparsity tensors" notices and a dozen INFO lines each time a
detector is created, one alignment notice on its first frame. `quiet_native`
points fd 2 at an unlinked temporary file around those calls only, then logs
what was written under `accessd.native`: at DEBUG, or at ERROR when a line
reads as an error (glog's E/F prefixes, ONNX Runtime's `[E:`, "ERROR",
"Check failed"), so a real failure still reaches the log. Outside those calls
fd 2 is the process's stderr, so anything native code writes later reaches the
journal as before.

A file, not a pipe and a reader thread: writes to a file never block, so native
code holding the GIL can never wait on a Python thread (an earlier pipe-based
version hung the daemon on SIGTERM). While fd 2 points at the file, other
threads' Python log lines must not land there, so `separate_python_stderr`
gives Python's `sys.stderr` its own descriptor before logging is set up.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("accessd.native")

_ERROR = re.compile(r"^[EF]\d{4} |\[E:|\bERROR\b|Check failed|\bFATAL\b")
_lock = threading.RLock()  # one capture at a time; the same thread may nest


def separate_python_stderr() -> None:
    """Python's sys.stderr on a duplicate of fd 2, so `quiet_native` never captures our own lines.

    Call before logging binds its handler to sys.stderr; idempotent.
    """
    if getattr(sys.stderr, "_accessd_separate", False):
        return
    sys.stderr.flush()
    stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    stream._accessd_separate = True  # type: ignore[attr-defined]
    sys.stderr = stream


@contextmanager
def quiet_native(what: str) -> Iterator[list[str]]:
    """Inside the block, native writes to fd 2 are logged (DEBUG, or ERROR for errors), not printed.

    Yields a list that holds the captured lines once the block has ended.
    """
    captured: list[str] = []
    with _lock:
        with tempfile.TemporaryFile(prefix="accessd-native-") as capture:
            saved = os.dup(2)
            os.dup2(capture.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read().decode("utf-8", errors="replace")
    for line in text.splitlines():
        line = line.rstrip()
        if line:
            captured.append(line)
            log.log(logging.ERROR if _ERROR.search(line) else logging.DEBUG, "%s: %s", what, line)
