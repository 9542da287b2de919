"""Plain data passed between pipeline stages.

Nothing here depends on MediaPipe or ONNX Runtime: those types stay in their own
modules, so every stage can be tested and reasoned about with numpy alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]  # H x W x 3, RGB
Floats = npt.NDArray[np.float32]


class Outcome(enum.Enum):
    """What the daemon decided; the value is what logs, hooks and the audit log carry."""

    GRANT = "grant"
    DENY = "deny"
    # A face verified as someone enrolled, refused because it looks presented (a photo, a
    # screen): the decision names the liveness check that fired in `check`.
    SPOOF_SUSPECTED = "spoof_suspected"

    @property
    def exit_code(self) -> int:
        # Shell convention: success (0) means "the door may open".
        return 0 if self is Outcome.GRANT else 1


@dataclass(frozen=True)
class Face:
    """One detected face in image pixels."""

    x: float
    y: float
    width: float
    height: float
    confidence: float
    # (x, y) pixels; MediaPipe's order: right eye, left eye, nose tip, mouth,
    # right ear tragion, left ear tragion ("right" is the subject's right).
    keypoints: tuple[tuple[float, float], ...] = ()

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.width / 2.0, self.y + self.height / 2.0)


@dataclass(frozen=True)
class Frame:
    """One captured frame with its timestamp in seconds.

    `ts` is monotonic for live sources and the stream position for files, so
    decisions on a video file do not depend on how fast this machine is.
    """

    image: Image
    index: int
    ts: float


@dataclass(frozen=True)
class PersonScore:
    person: str
    ratio: float  # fraction of the person's photos whose score is above detection_threshold
    score: float  # mean pair score over the person's photos
    photos: int
    # The pair score of the person's k-th best photo, k the fewest matches that verify
    # them (1 of 1, 2 of 3): verified exactly when it is above detection_threshold.
    # The look-alike guard compares these between people.
    quorum: float = 0.0


@dataclass(frozen=True)
class FaceResult:
    """The verifier's view of one face: the best person first, then the runner-up (by ratio)
    and the closest other (by quorum score) when they differ; no one else."""

    face: Face
    people: tuple[PersonScore, ...]
    candidate: str | None  # verified with margin over the runner-up, else None
    rival: str | None = None  # set when refused because the face is close to this person too
    # Set when refused because the face is at least as close to a face marked "not <this person>"
    # as to any of their own photos (the console's "not this person").
    not_person: str | None = None
    # Liveness signals, measured on verified faces only: the eye aspect ratio (None when
    # not measured) and the instrument check's finding (a picture's frame around the face).
    ear: float | None = None
    instrument: str | None = None

    @property
    def best(self) -> PersonScore | None:
        return self.people[0] if self.people else None


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    person: str | None
    score: float
    ratio: float
    frame: int
    ts: float
    source: str
    reason: str
    snapshot: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    door: str = ""  # the door that decided (named in config.yaml; "door" when there is one)

    def to_record(self) -> dict[str, object]:
        return {
            "door": self.door,
            "decision": self.outcome.value,
            "person": self.person,
            "score": round(self.score, 6),
            "ratio": round(self.ratio, 6),
            "frame": self.frame,
            "source": self.source,
            "reason": self.reason,
            "snapshot": self.snapshot,
            **self.extra,
        }
