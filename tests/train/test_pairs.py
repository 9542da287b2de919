from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PROTOCOL
from train.pairs import PairListError, load_pairs, parse_pairs


def test_devtest_without_count_line() -> None:
    pl = load_pairs(PROTOCOL / "pairsDevTest.txt")
    assert len(pl.pairs) == 1000 and pl.folds == 1
    assert sum(p.same for p in pl.pairs) == 500
    first = pl.pairs[0]
    assert first.a == "Abdullah_Gul/Abdullah_Gul_0013.jpg" and first.b == "Abdullah_Gul/Abdullah_Gul_0014.jpg"


def test_same_list_with_official_count_line() -> None:
    body = (PROTOCOL / "pairsDevTest.txt").read_text()
    with_header = parse_pairs("500\n" + body)
    assert with_header.pairs == load_pairs(PROTOCOL / "pairsDevTest.txt").pairs


def test_view2_has_ten_folds() -> None:
    pl = load_pairs(PROTOCOL / "pairs.txt")
    assert pl.folds == 10 and len(pl.pairs) == 6000
    assert {p.fold for p in pl.pairs} == set(range(10))
    fold0 = [p for p in pl.pairs if p.fold == 0]
    assert [p.same for p in fold0] == [True] * 300 + [False] * 300


@pytest.mark.parametrize("text", ["a\tb\n", "Name\t1\tx\n", "Name\t0\t2\n", "2 5\nA\t1\t2\n"])
def test_malformed_lines_name_the_line(text: str) -> None:
    with pytest.raises(PairListError, match="pairs"):
        parse_pairs(text, "pairs")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PairListError, match="nope.txt"):
        load_pairs(tmp_path / "nope.txt")
