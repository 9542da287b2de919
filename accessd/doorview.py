"""What the console may see of the running door: written by the frame loop, read by web threads.

The frame loop only swaps references here (the frame it already has, its face
results, a status dict): no copy, no encoding, no waiting on a reader, so the
console cannot slow decisions. Web threads do the drawing and JPEG encoding on
their own time. Only the latest frame is held; nothing older is kept.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from accessd.gallery import Gallery
from accessd.types import FaceResult, Image


@dataclass(frozen=True)
class Live:
    image: Image  # RGB, the frame as the loop saw it
    results: tuple[FaceResult, ...]
    seq: int
    ts: float


@dataclass
class DoorView:
    status: dict[str, object] = field(default_factory=dict)
    gallery: Gallery | None = None
    _live: Live | None = None
    _seq: int = 0
    _scores: deque[tuple[str, float, float]] = field(default_factory=lambda: deque(maxlen=1000))
    _changed: threading.Condition = field(default_factory=threading.Condition)
    closing: threading.Event = field(default_factory=threading.Event)  # the daemon is stopping: streams end

    def publish(self, image: Image, results: list[FaceResult]) -> None:
        """Called by the frame loop for every frame: a reference swap and a notify."""
        with self._changed:
            self._seq += 1
            self._live = Live(image, tuple(results), self._seq, time.time())
            self._changed.notify_all()
            for r in results:
                if r.best is not None:
                    self._scores.append(("verified" if r.candidate else "refused", r.best.score, r.best.ratio))

    def live(self) -> Live | None:
        return self._live

    def wait_newer(self, seq: int, timeout: float) -> Live | None:
        """The first frame after `seq`, or the current one after `timeout` (web threads only)."""
        with self._changed:
            self._changed.wait_for(lambda: self._live is not None and self._live.seq > seq, timeout)
            return self._live

    def recent_scores(self) -> list[tuple[str, float, float]]:
        return list(self._scores)


def draw(live: Live) -> bytes:
    """The live frame as a JPEG with each face boxed and labelled (on a web thread)."""
    bgr = cv2.cvtColor(live.image, cv2.COLOR_RGB2BGR)
    for r in live.results:
        f = r.face
        best = r.best
        ok = r.candidate is not None
        label = f"{r.candidate if ok else 'unknown'}"
        if best is not None:
            label += f" {best.score:.2f} ({best.ratio:.0%})"
        colour = (60, 180, 60) if ok else (40, 40, 220)
        p0 = (int(f.x), int(f.y))
        p1 = (int(f.x + f.width), int(f.y + f.height))
        cv2.rectangle(bgr, p0, p1, colour, 2)
        cv2.putText(bgr, label, (p0[0], max(14, p0[1] - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(np.asarray(buffer).tobytes())
