"""Passive liveness from face landmarks over time: pure functions, numbers in, a named reason out.

*Blink*: the eye aspect ratio (EAR: the eyelids' opening over the eye's
width, from six mesh points per eye) drops when the lids close. A blink is an
excursion below `open` x the person's open-eye baseline that reaches below
`closed` x baseline and comes back above `open` within `max_s` (a human blink
is about 100-400 ms). Looking down lowers the lids too, and as deep: in the
shared clip a downward glance dips as low as a blink, but the lids stay low
for about 0.9 s, so its excursion is too long to count. A photo, held still or
moved, has no excursion at all; a tilt that foreshortens the eyes by a quarter
would have to turn the picture past 40 degrees within half a second.

The baseline is the median EAR over the last `baseline_s` of samples, frozen
while an excursion lasts, so a long glance does not drag it down.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Mesh indices of the six EAR points per eye (corner, upper lid x2, corner, lower lid x2),
# the usual choice for MediaPipe's 468-point mesh; "right" is the subject's right.
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (362, 385, 387, 263, 373, 380)


def eye_aspect_ratio(points: npt.NDArray[np.float32]) -> float:
    """Both eyes' EAR, averaged: (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|) on the mesh's x, y."""

    def one(idx: tuple[int, ...]) -> float:
        p = points[list(idx), :2].astype(np.float64)
        width = float(np.linalg.norm(p[0] - p[3]))
        if width <= 0:
            return 0.0
        return float((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * width))

    return (one(RIGHT_EYE) + one(LEFT_EYE)) / 2.0


@dataclass(frozen=True)
class BlinkRule:
    closed: float = 0.75  # below this fraction of the open baseline the eyes count as closed ...
    open: float = 0.9  # ... and above this as open again
    min_s: float = 0.06  # the excursion below `open`, first sample below to first above, lasts
    max_s: float = 0.5  # at least this and at most this: a blink, not noise and not a glance
    baseline_s: float = 2.0  # the open baseline: the median EAR over this long ...
    baseline_min_samples: int = 4  # ... once there are this many samples


@dataclass(frozen=True)
class Blink:
    start: float  # the first sample below `open`
    end: float  # the first sample back above it
    depth: float  # the lowest EAR reached, as a fraction of the baseline


class BlinkDetector:
    """EAR samples in time order in; each completed blink out, once."""

    def __init__(self, rule: BlinkRule | None = None) -> None:
        self.rule = rule or BlinkRule()
        self._samples: deque[tuple[float, float]] = deque()
        self._dip_start: float | None = None
        self._dip_baseline = 0.0
        self._dip_min = 1.0

    def reset(self) -> None:
        self._samples.clear()
        self._dip_start = None

    def baseline(self) -> float | None:
        if len(self._samples) < self.rule.baseline_min_samples:
            return None
        return float(np.median([e for _, e in self._samples]))

    def add(self, ts: float, ear: float) -> Blink | None:
        """Feed one sample; the blink it completes, if any."""
        rule = self.rule
        found = None
        if self._dip_start is None:
            base = self.baseline()
            if base is not None and base > 0 and ear < rule.open * base:
                self._dip_start, self._dip_baseline, self._dip_min = ts, base, ear / base
        else:
            self._dip_min = min(self._dip_min, ear / self._dip_baseline)
            if ear >= rule.open * self._dip_baseline:
                length = ts - self._dip_start
                if self._dip_min < rule.closed and rule.min_s <= length <= rule.max_s:
                    found = Blink(self._dip_start, ts, self._dip_min)
                self._dip_start = None
        if self._dip_start is None:  # the baseline learns from open eyes only
            self._samples.append((ts, ear))
        while self._samples and self._samples[0][0] < ts - rule.baseline_s:
            self._samples.popleft()
        return found
