from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accessd.audit import AuditError, AuditLog
from accessd.types import Decision, Outcome


def decision(i: int) -> Decision:
    return Decision(Outcome.GRANT if i % 2 else Outcome.DENY, "ann" if i % 2 else None, 0.9, 0.75, i, i / 30,
                    "cam", "verified")


def test_records_append_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.append(decision(i))
    log.close()
    AuditLog(path).append(decision(3))  # reopening appends, never truncates
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3]
    assert {"ts", "decision", "person", "score", "ratio", "frame", "source"} <= records[0].keys()
    assert records[1]["decision"] == "grant" and records[0]["person"] is None


def test_kill_9_mid_run_leaves_only_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    code = (
        "import sys; from pathlib import Path; from accessd.audit import AuditLog; "
        "from tests.test_audit import decision; log = AuditLog(Path(sys.argv[1]))\n"
        "i = 0\nwhile True:\n    log.append(decision(i)); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 30
    while (not path.exists() or path.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = path.read_text().splitlines()
    assert len(lines) > 50
    for line in lines:
        json.loads(line)


def test_rotation_by_size_keeps_n_files_of_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=1000, keep=2)
    for i in range(60):
        log.append(decision(i))
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    frames = []
    for f in (path.with_name("audit.jsonl.2"), path.with_name("audit.jsonl.1"), path):
        assert f.stat().st_size <= 1000
        frames += [json.loads(line)["frame"] for line in f.read_text().splitlines()]
    assert frames == list(range(60 - len(frames), 60))  # the newest records, in order, none torn


def test_unopenable_log_withholds_then_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the log's folder should be")
    log = AuditLog(blocker / "audit.jsonl")  # the daemon starts; it does not crash
    assert "state/audit.jsonl: " in caplog.text and "decisions are withheld" in caplog.text
    with pytest.raises(AuditError, match="state/audit.jsonl: "):
        log.append(decision(1))
    blocker.unlink()  # the operator fixes it: the next decision is recorded, no restart
    log.append(decision(2))
    log.close()
    assert [json.loads(x)["frame"] for x in (blocker / "audit.jsonl").read_text().splitlines()] == [2]


def test_failed_rotation_never_writes_through_a_stale_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=300, keep=1)
    log.append(decision(0))
    # Rotation renames audit.jsonl to audit.jsonl.1: a folder of that name makes it fail.
    (tmp_path / "audit.jsonl.1").mkdir()
    with pytest.raises(AuditError):
        log.append(decision(1))
    other = tmp_path / "other.txt"
    with other.open("w") as f:  # likely to be handed the descriptor number the log closed
        with pytest.raises(AuditError):
            log.append(decision(99))
        f.write("mine\n")
    assert other.read_text() == "mine\n"
    log.close()


def test_a_short_write_is_cut_off_and_the_next_record_starts_on_its_own_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The branch a kill -9 cannot reach (one small write never tears): a disk that takes half a record."""
    import accessd.audit as audit_module

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append(decision(0))
    real_write = os.write

    def half(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(audit_module.os, "write", half)
    with pytest.raises(AuditError, match="short write"):
        log.append(decision(1))
    monkeypatch.setattr(audit_module.os, "write", real_write)
    log.append(decision(2))
    log.close()
    assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == [0, 2]


def test_the_folder_is_fsynced_when_the_log_is_created_and_rotated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import accessd.audit as audit_module

    synced: list[Path] = []
    real = audit_module._fsync_dir
    monkeypatch.setattr(audit_module, "_fsync_dir", lambda folder: (synced.append(folder), real(folder)))
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=300, keep=2)
    assert synced == [tmp_path]  # created: its name is durable before any record is promised
    for i in range(3):
        log.append(decision(i))
    log.close()
    assert len(synced) >= 3 and set(synced) == {tmp_path}  # each rotation renames, then a new file


@pytest.mark.parametrize(("max_bytes", "keep"), [(-1, 5), (1000, 0), (1000, -1)])
def test_settings_that_would_erase_the_log_are_refused(tmp_path: Path, max_bytes: int, keep: int) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        AuditLog(tmp_path / "audit.jsonl", max_bytes=max_bytes, keep=keep)
