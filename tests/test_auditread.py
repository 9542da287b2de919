from __future__ import annotations

import json
from pathlib import Path

import pytest

from accessd.auditread import newest_first


@pytest.mark.parametrize("block", [7, 64, 97, 65536])
def test_records_come_newest_first_across_block_edges(tmp_path: Path, block: int) -> None:
    path = tmp_path / "audit.jsonl"
    lines = [json.dumps({"n": i, "pad": "x" * (i % 13)}) for i in range(300)]
    path.write_text("\n".join(lines) + "\n" + '{"n": 300, "half-writ')  # a record being written
    assert [r["n"] for r in newest_first(path, block)] == list(range(299, -1, -1))


def test_a_missing_or_empty_log_has_no_records(tmp_path: Path) -> None:
    assert list(newest_first(tmp_path / "absent.jsonl")) == []
    (tmp_path / "empty.jsonl").write_text("")
    assert list(newest_first(tmp_path / "empty.jsonl")) == []


def test_reading_stops_when_the_caller_has_enough(tmp_path: Path) -> None:
    """The console's page of 50 reads the end of a large log, not all of it."""
    path = tmp_path / "audit.jsonl"
    with path.open("w") as f:
        for i in range(200_000):
            f.write(json.dumps({"n": i, "decision": "deny"}) + "\n")
    reader = newest_first(path)
    first = [next(reader)["n"] for _ in range(51)]
    assert first == list(range(199_999, 199_948, -1))
    assert reader.gi_frame is not None and reader.gi_frame.f_locals["end"] > path.stat().st_size - 200_000
