"""The seed tutorials' data layout: data/anchor, data/positive, data/negative.

Anchor and positive photos are one person (the person to verify); negative
photos are other people. Relabelled onto identities so one pipeline serves both
layouts: anchor/ and positive/ become the person "anchor", and each negative
photo is its own stranger (the seeds' negatives are LFW photos of many people).
"""

from __future__ import annotations

from pathlib import Path

from train.faces import FaceSet

SEED_DIRS = ("anchor", "positive", "negative")


def is_seed_layout(root: Path) -> bool:
    return all((root / d).is_dir() for d in SEED_DIRS)


def relabel(faces: FaceSet) -> FaceSet:
    people = ["anchor" if p.split("/")[0] in ("anchor", "positive") else f"negative:{p}" for p in faces.paths]
    return FaceSet(crops=faces.crops, people=people, paths=faces.paths, teacher=faces.teacher)
