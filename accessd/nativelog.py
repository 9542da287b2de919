"""Native libraries' stderr, routed through accessd's logging.

MediaPipe (LiteRT, absl) and ONNX Runtime write straight to file descriptor 2,
outside Python's logging: 60 lines of notices for one `accessd verify`. Here
fd 2 becomes a pipe that a thread reads line by line and logs under
`accessd.native`, at DEBUG, or at ERROR when the line reads as an error
(glog's E/F prefixes, ONNX Runtime's `[E:`, "ERROR", "Check failed"), so a
real failure still reaches the log. Python's own `sys.stderr` (our log
lines, tracebacks) keeps writing to the original stderr.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import sys
import threading

log = logging.getLogger("accessd.native")

_ERROR = re.compile(r"^[EF]\d{4} |\[E:|\bERROR\b|Check failed|\bFATAL\b")
_state: dict[str, object] = {}


def route_native_stderr() -> None:
    """Send what native code writes to fd 2 through logging; idempotent."""
    if _state:
        return
    real = os.dup(2)
    sys.stderr.flush()
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    # Native code writes to fd 2 while holding the GIL, and this reader needs the GIL
    # to drain the pipe: a full pipe would block the writer, and the whole process,
    # for good. So the pipe is large and its write end never blocks: a flood loses
    # lines instead of hanging the door.
    try:
        fcntl.fcntl(2, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: the default 64 KB, still non-blocking
    fcntl.fcntl(2, fcntl.F_SETFL, fcntl.fcntl(2, fcntl.F_GETFL) | os.O_NONBLOCK)
    thread = threading.Thread(target=_pump, args=(read,), name="native-stderr", daemon=True)
    thread.start()
    _state.update(real=real, thread=thread)
    atexit.register(_drain)


def _pump(fd: int) -> None:
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as pipe:
        for line in pipe:
            text = line.rstrip()
            if text:
                log.log(logging.ERROR if _ERROR.search(text) else logging.DEBUG, "%s", text)


def _drain() -> None:
    """At exit: close the pipe's last writer so the reader logs what is left, then stops."""
    real = _state.get("real")
    thread = _state.get("thread")
    if isinstance(real, int):
        os.dup2(real, 2)
    if isinstance(thread, threading.Thread):
        thread.join(timeout=1.0)
