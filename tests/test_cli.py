from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SAMPLES, run_py
from tests.test_daemon import write_config


def test_verify_same_and_different_people(tmp_path: Path, trained_model: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", trained_model)
    same = run_py("-m", "accessd", "verify", "--config", str(cfg), str(SAMPLES / "obama.jpg"),
                  str(SAMPLES / "obama3.jpg"), check=False)
    other = run_py("-m", "accessd", "verify", "--config", str(cfg), str(SAMPLES / "obama.jpg"),
                   str(SAMPLES / "biden.jpg"), check=False)
    s, o = json.loads(same.stdout), json.loads(other.stdout)
    # The shipped model at its own threshold: two photos of Obama match, Obama and Biden do not.
    assert s["match"] is True and o["match"] is False, (s, o)
    assert s["score"] > s["threshold"] > o["score"]
    assert (same.returncode, other.returncode) == (0, 1)


def test_verify_names_a_photo_without_a_face(tmp_path: Path, trained_model: Path) -> None:
    import cv2
    import numpy as np

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    cfg = write_config(tmp_path / "config.yaml", trained_model)
    result = run_py("-m", "accessd", "verify", "--config", str(cfg), str(SAMPLES / "obama.jpg"), str(blank),
                    check=False)
    assert result.returncode == 2 and "blank.png: no face found" in result.stderr


def test_bench_json_shape(tmp_path: Path, trained_model: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", trained_model)
    result = run_py("-m", "accessd", "bench", "--config", str(cfg), "--json", "--sizes", "10,100", "--frames", "5")
    report = json.loads(result.stdout)
    runs = [(g["gallery_size"], g["face"]) for g in report["galleries"]]
    assert runs == [(10, "enrolled"), (10, "stranger"), (100, "enrolled"), (100, "stranger")]
    assert report["cascade"] is True and report["model"] == trained_model.name
    for g in report["galleries"]:
        assert g["fps"] > 0 and 0 < g["latency_ms_p50"] <= g["latency_ms_p95"]


def test_bench_doors_measures_each_door_and_the_separate_processes(tmp_path: Path, trained_model: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", trained_model)
    result = run_py("-m", "accessd", "bench", "--config", str(cfg), "--json", "--doors", "2", "--sizes", "10",
                    "--fps", "5", "--seconds", "2", "--faces", "1", "--separate")
    one, separate = json.loads(result.stdout)
    assert (one["design"], separate["design"]) == ("one process", "2 processes")
    for row in (one, separate):
        doors = row["report"]["per_door"]
        assert len(doors) == 2 and all(d["frames_in"] >= 5 and d["decided"] >= 1 for d in doors), doors
        assert 0 < row["worst_p50_ms"] <= row["worst_p95_ms"] and 0 <= row["dropped_pct"] <= 100
    assert one["report"]["faces"] == 1  # the second door showed an empty corridor


def test_enroll_check_flags_a_mislabelled_photo(tmp_path: Path, trained_model: Path) -> None:
    from tests.test_daemon import OTHER_ENROLLED, PERSON, enrol, photos

    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:3])
    enrol(gallery, OTHER_ENROLLED, photos(OTHER_ENROLLED)[:3])
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)})
    clean = run_py("-m", "accessd", "enroll", "--check", "--config", str(cfg), check=False)
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout
    wrong = photos(PERSON)[4]
    enrol(gallery, OTHER_ENROLLED, [wrong])  # filed under the wrong name
    flagged = run_py("-m", "accessd", "enroll", "--check", "--config", str(cfg), check=False)
    assert flagged.returncode == 1
    lines = flagged.stdout.splitlines()
    assert lines[0].startswith(f"{OTHER_ENROLLED}/{wrong.name}\tlooks like {PERSON} "), lines


def test_set_code_keeps_only_a_salted_hash_and_audits_it(tmp_path: Path) -> None:
    from accessd.codes import check_code
    from accessd.personfile import read_rules

    (tmp_path / "g" / "ann").mkdir(parents=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"gallery: {{dir: {tmp_path / 'g'}}}\naudit: {{path: {tmp_path / 'audit.jsonl'}}}\n")
    env = {**os.environ, "USER": "tester"}
    done = subprocess.run([sys.executable, "-m", "accessd", "set-code", "ann", "--config", str(cfg)], cwd=REPO,
                          input="97531\n", capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    rules = read_rules(tmp_path / "g" / "ann" / "person.yaml")
    assert rules.code_hash is not None and check_code("97531", rules.code_hash)
    assert "97531" not in (tmp_path / "g" / "ann" / "person.yaml").read_text() + done.stdout + done.stderr
    short = subprocess.run([sys.executable, "-m", "accessd", "set-code", "ann", "--config", str(cfg)], cwd=REPO,
                           input="12\n", capture_output=True, text=True, check=False)
    assert short.returncode == 1 and "code: must be 4 to 64 characters (got 2)" in short.stderr
    nobody = subprocess.run([sys.executable, "-m", "accessd", "set-code", "bob", "--config", str(cfg)], cwd=REPO,
                            input="97531\n", capture_output=True, text=True, check=False)
    assert nobody.returncode == 1 and "person 'bob': not found" in nobody.stderr
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["action"], r["person"], r["client"]) for r in records] == [("set_code", "ann", "cli tester")]
    assert check_code("97531", read_rules(tmp_path / "g" / "ann" / "person.yaml").code_hash or "")  # unchanged
