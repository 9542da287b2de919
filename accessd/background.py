"""One worker thread for slow rebuilds, so the frame loop never waits on them.

Embedding a new enrolment of hundreds of photos, or a SIGHUP reload with a new
model (every photo embedded again), takes tens of seconds on a CPU. Done on the
frame thread it would pause the door and, past `WatchdogSec=`, get the daemon
killed by systemd. Here the job runs beside the loop, which keeps serving with
its last good state and swaps in the result when it is ready.

Jobs run one at a time in submission order. A job submitted while another of
the same name waits its turn replaces it (ten file events make one rebuild).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Done:
    name: str
    result: Any = None
    error: BaseException | None = None


class Worker:
    def __init__(self) -> None:
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._queue: list[tuple[str, Callable[[], Any]]] = []
        self._done: list[Done] = []
        self._wake = threading.Event()
        self.busy = threading.Event()  # set while a job runs (tests read it)
        self._thread = threading.Thread(target=self._run, name="rebuild", daemon=True)
        self._thread.start()

    def submit(self, name: str, job: Callable[[], Any]) -> None:
        with self._lock:
            self._queue = [(n, j) for n, j in self._queue if n != name] + [(name, job)]
        self._wake.set()

    def finished(self) -> list[Done]:
        """Results since the last call, oldest first; never blocks."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def _run(self) -> None:
        while not self._closed.is_set():
            if not self._wake.wait(timeout=0.5):
                continue
            while True:
                with self._lock:
                    if not self._queue:
                        self._wake.clear()
                        break
                    name, job = self._queue.pop(0)
                    self.busy.set()
                try:
                    outcome = Done(name, result=job())
                except Exception as exc:  # noqa: BLE001 - handed to the loop, which logs it and keeps its state
                    outcome = Done(name, error=exc)
                with self._lock:
                    self._done.append(outcome)
                    self.busy.clear()
                if self._closed.is_set():
                    return

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; a job in progress is left to finish on its daemon thread."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout)
