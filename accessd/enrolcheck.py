"""The enrolment check: photos that would open the door for the wrong person, or for no one.

A mislabelled photo is a door opened for the wrong person. So each enrolled
photo is scored against every other enrolled photo (the door's own pair
score), and flagged when
- it matches someone else's photo above the pair threshold ("looks like Q"),
  unless it matches its own person's photos better still: look-alike
  siblings are the operator's call, but a photo that sits closer to another
  person than to its own is almost always filed under the wrong name;
- its person has other photos and it scores below half the pair threshold
  against all of them ("matches none of P's other photos"): another person
  filed under this name. Half, because a real but hard photo of the same
  person (years apart, side-lit) often scores between the two, and flagging
  it would teach operators to ignore flags: with the shipped model, half the
  door threshold (0.33) is close to its balanced pair threshold on held-out
  people (0.32), while two different people typically score below 0.1.
`accessd enroll --check` and the console's People page both call `check`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accessd.gallery import Gallery
from accessd.types import Floats


@dataclass(frozen=True)
class Flag:
    person: str
    photo: str  # the file name inside the person's folder
    problem: str
    score: float  # the score behind the flag


def check(gallery: Gallery, scores: Floats, threshold: float) -> list[Flag]:
    """Flags from `scores`, the M x M pair scores of the gallery's photos (row: probe photo)."""
    flags = []
    people = np.asarray(gallery.person_of)
    for i, photo in enumerate(gallery.photos):
        row = scores[i].astype(np.float64).copy()
        row[i] = -np.inf  # not against itself
        own = people == people[i]
        own_best = float(row[own].max()) if own.sum() > 1 else None
        others = ~own
        if others.any():
            j = int(np.argmax(np.where(others, row, -np.inf)))
            other_best = float(row[j])
            if other_best > threshold and (own_best is None or other_best >= own_best):
                flags.append(Flag(photo.person, photo.path.name,
                                  f"looks like {gallery.people[people[j]]} ({gallery.photos[j].path.name})",
                                  other_best))
                continue
        if own_best is not None and own_best <= threshold / 2:
            flags.append(Flag(photo.person, photo.path.name,
                              f"matches none of {photo.person}'s other photos", own_best))
    return flags
