"""One model run for the faces of every door that has some right now (dynamic batching).

Each door's thread detects on its own frames and, when it found faces, asks
`score` for their embeddings and scores. The batcher's thread takes every
request waiting at that moment (against the same gallery), runs them through
the model as one batch, and hands each door its rows. A door with no face
never waits here, and a door never waits for more than the run in progress
plus its own: nothing is held back to fill a batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from accessd.model import FaceCrops, Scored, stack
from accessd.types import Floats

log = logging.getLogger(__name__)

Run = Callable[[list[FaceCrops], Floats], Scored]  # crops, targets -> the model's run on them


class BatcherClosed(RuntimeError):
    pass


@dataclass
class _Request:
    crops: list[FaceCrops]
    targets: Floats
    done: threading.Event = field(default_factory=threading.Event)
    scored: Scored | None = None
    error: BaseException | None = None


class Batcher:
    def __init__(self, run: Run) -> None:
        self._run = run
        self._cond = threading.Condition()
        self._waiting: list[_Request] = []
        self._closed = False
        self.runs = 0  # model runs made, and the requests they served (bench reports the ratio)
        self.served = 0
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def score(self, crops: list[FaceCrops], targets: Floats) -> Scored:
        """`crops` scored against `targets` (faces x targets), in a run shared with other doors.

        Raises what the run raised, or BatcherClosed once the batcher is closed.
        """
        request = _Request(crops, targets)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the model is being replaced")
            self._waiting.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.scored is not None
        return request.scored

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
                if not self._waiting:
                    return  # closed, and nobody is waiting
                # Everything against the first request's gallery; a request against another (a swap
                # came between) waits for the next run.
                targets = self._waiting[0].targets
                batch = [r for r in self._waiting if r.targets is targets]
                self._waiting = [r for r in self._waiting if r.targets is not targets]
            self._serve(batch, targets)

    def _serve(self, batch: list[_Request], targets: Floats) -> None:
        try:
            scored = self._run([c for r in batch for c in r.crops], targets)
        except Exception as exc:  # noqa: BLE001  # re-raised on each door's own thread, which fails closed
            for r in batch:
                r.error = exc
                r.done.set()
            return
        self.runs += 1
        self.served += len(batch)
        row = 0
        for r in batch:
            r.scored = scored.rows(row, row + len(r.crops))
            row += len(r.crops)
            r.done.set()

    def close(self) -> None:
        """Serve what is waiting, then stop; later calls to `score` raise BatcherClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10.0)


def model_run(score: Callable[[tuple[np.ndarray, ...], Floats], Scored]) -> Run:
    """The Run for a SiameseModel's `score`."""

    def run(crops: list[FaceCrops], targets: Floats) -> Scored:
        return score(stack(crops), targets)

    return run
