"""LFW verification pair lists: `pairs.txt` (View 2) and `pairsDev*.txt` (View 1).

Both forms are accepted: with a count line at the top (`10 300` or `1100`) and
without. Same-person lines are `Name i j`, different-person lines
`Name1 i Name2 j`; photo numbers map to `<Name>/<Name>_<NNNN>.jpg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PairListError(ValueError):
    pass


@dataclass(frozen=True)
class Pair:
    a: str  # relative photo path
    b: str
    same: bool
    fold: int


@dataclass(frozen=True)
class PairList:
    pairs: tuple[Pair, ...]
    folds: int

    @property
    def people(self) -> frozenset[str]:
        return frozenset(p.split("/")[0] for pair in self.pairs for p in (pair.a, pair.b))


def photo(name: str, number: str, where: str) -> str:
    if not number.isdigit() or int(number) < 1:
        raise PairListError(f"{where}: photo number must be a positive integer (got {number!r})")
    return f"{name}/{name}_{int(number):04d}.jpg"


def parse_pairs(text: str, source: str = "<pairs>") -> PairList:
    lines = [(i + 1, line.split()) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise PairListError(f"{source}: no pairs")
    folds, per_fold = 1, 0
    first = lines[0][1]
    if all(f.isdigit() for f in first) and len(first) in (1, 2):
        # Header: "10 300" (folds, same pairs per fold) or "1100" (same pairs in total).
        folds = int(first[0]) if len(first) == 2 else 1
        per_fold = int(first[-1])
        lines = lines[1:]
    pairs: list[Pair] = []
    for lineno, fields in lines:
        where = f"{source}:{lineno}"
        if len(fields) == 3:
            pairs.append(Pair(photo(fields[0], fields[1], where), photo(fields[0], fields[2], where), True, 0))
        elif len(fields) == 4:
            pairs.append(Pair(photo(fields[0], fields[1], where), photo(fields[2], fields[3], where), False, 0))
        else:
            raise PairListError(f"{where}: expected 3 or 4 tab-separated fields, got {len(fields)}")
    if folds > 1:
        size = 2 * per_fold
        if len(pairs) != folds * size:
            raise PairListError(f"{source}: header promises {folds}x{size} pairs, found {len(pairs)}")
        pairs = [Pair(p.a, p.b, p.same, i // size) for i, p in enumerate(pairs)]
    return PairList(tuple(pairs), folds)


def load_pairs(path: Path) -> PairList:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PairListError(f"{path}: cannot read ({exc})") from exc
    return parse_pairs(text, str(path))
