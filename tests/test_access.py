"""A scripted day at a door: the real pipeline on real LFW faces, a fake wall clock, the rules applied."""

from __future__ import annotations

import datetime as dt
import sys
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from accessd.codes import hash_code
from accessd.imageio import read_image
from accessd.personfile import parse_rules, write_rules
from tests.test_daemon import OTHER_ENROLLED, PERSON, Scripted, audit, enrol, paste, photos, write_config

BERLIN = ZoneInfo("Europe/Berlin")
STAFF, VISITOR, GUARD = PERSON, OTHER_ENROLLED, "Jacques_Chirac"
CODE = "80846193"  # long enough not to turn up by chance inside a score or a time


class Clock:
    """The door's wall clock, set by the script as each frame is read."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, 0, 0, tzinfo=BERLIN)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    return {p: paste(read_image(photos(p)[-1])) for p in (STAFF, VISITOR, GUARD)}


def test_a_scripted_day(tmp_path: Path, trained_model: Path, faces: dict[str, np.ndarray]) -> None:
    from accessd.config import load_config
    from accessd.daemon import Daemon

    gallery = tmp_path / "g"
    for person in (STAFF, VISITOR, GUARD):
        enrol(gallery, person, photos(person)[:5])
    write_rules(gallery / STAFF, parse_rules({"name": "Staff", "windows": ["mon-fri 08:00-18:00"]}, "staff"))
    write_rules(gallery / VISITOR, parse_rules({"valid_until": "2026-12-01T15:00"}, "visitor"))
    write_rules(gallery / GUARD, parse_rules({"code_hash": hash_code(CODE)}, "guard"))
    env_log = tmp_path / "env.log"
    hook = {"argv": [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'a').write(' '.join(os.environ.get(k, '') "
                     "for k in ('ACCESSD_DECISION', 'ACCESSD_VERIFIED', 'ACCESSD_REFUSAL', 'ACCESSD_FACTOR')) + '\\n')",
                     str(env_log)], "on": ["grant", "deny"]}
    cfg = write_config(
        tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)},
        audit={"path": str(tmp_path / "a.jsonl")}, actions={"hooks": [hook]},
        decision={"grant_cooldown_s": 0.5, "deny_interval_s": 0.5, "lockout_denies": 0},
        policy={"timezone": "Europe/Berlin", "holidays": [{"date": "2026-12-02", "name": "closed day"}],
                "second_factor_hours": ["daily 22:00-24:00", "daily 00:00-06:00"], "second_factor_window_s": 30,
                "code_attempts": 3, "code_lockout_s": 600})
    clock = Clock()
    daemon = Daemon(load_config(cfg), clock=clock)
    grey = np.full_like(faces[STAFF], 128)
    script: list[tuple[np.ndarray, float, object]] = []
    ts = 0.0
    scenes: list[str] = []

    def scene(label: str, person: str | None, when: str, frames: int = 6,
              code: str | None = None, code_at: int = 3) -> None:
        """`frames` frames of `person` (None: an empty corridor) at local time `when`, a code typed at frame `code_at`."""
        nonlocal ts
        ts += 30.0  # a gap: nothing seen before votes
        t = dt.datetime.fromisoformat(when).replace(tzinfo=BERLIN)
        for i in range(frames):
            def before(i: int = i, t: dt.datetime = t) -> None:
                clock.now = t + dt.timedelta(seconds=i / 15)
                if i == 0:
                    scenes.append(label)
                if code is not None and i == code_at:
                    assert daemon.enter_code("door", code, "test keypad")
            script.append((faces[person] if person else grey, ts + i / 15, before))

    scene("staff in hours", STAFF, "2026-12-01T09:00")
    scene("staff too early", STAFF, "2026-12-01T07:59")
    scene("visitor before the pass ends", VISITOR, "2026-12-01T14:59:58", frames=4)
    scene("visitor one second after", VISITOR, "2026-12-01T15:00:01")
    scene("holiday", STAFF, "2026-12-02T10:00")
    scene("guard by day, face alone", GUARD, "2026-12-01T12:00")
    scene("guard at night, code", GUARD, "2026-12-01T23:00", frames=10, code=CODE, code_at=6)
    scene("guard at night, no code", GUARD, "2026-12-01T23:10", frames=5)
    scene("window passes", None, "2026-12-01T23:10:31", frames=2)
    scene("guard, wrong codes", GUARD, "2026-12-01T23:20", frames=14, code="7771111", code_at=5)
    script[-6] = (script[-6][0], script[-6][1], _and(script[-6][2], lambda: daemon.enter_code("door", "7772222", "k")))
    script[-3] = (script[-3][0], script[-3][1], _and(script[-3][2], lambda: daemon.enter_code("door", "7773333", "k")))
    scene("guard, right code while locked out", GUARD, "2026-12-01T23:25", frames=8, code=CODE, code_at=4)
    assert daemon.run(threading.Event(), source=Scripted(script)) == 0
    records = [r for r in audit(tmp_path / "a.jsonl") if "decision" in r]
    got = [(r["decision"], r.get("person") or r.get("verified"), r.get("refusal"), r.get("factor")) for r in records]
    assert got == [
        ("grant", STAFF, None, "face"),
        ("deny", STAFF, "outside_schedule", None),
        ("grant", VISITOR, None, "face"),
        ("deny", VISITOR, "pass_expired", None),
        ("deny", STAFF, "door_closed", None),
        ("grant", GUARD, None, "face"),
        ("grant", GUARD, None, "face+code"),
        ("deny", GUARD, "second_factor_missing", None),
        ("deny", GUARD, "second_factor_wrong", None),
        ("deny", GUARD, "second_factor_wrong", None),
        ("deny", GUARD, "second_factor_locked_out", None),  # the third wrong code
        ("deny", GUARD, "second_factor_locked_out", None),  # the face, during the lockout ...
        ("deny", None, "second_factor_locked_out", None),  # ... and the right code typed after it
    ], got
    # Verified but refused is not unknown: it names who, and says why in words.
    assert all(r["person"] is None and r["closest"] == r["verified"] for r in records[:-1] if r.get("refusal"))
    reasons = [str(r["reason"]) for r in records]
    assert "allowed mon-fri 08:00-18:00; now tue 2026-12-01 07:59 cet" in reasons[1]
    assert "valid until 2026-12-01T15:00" in reasons[3] and "holiday closed day: closed" in reasons[4]
    assert reasons[6] == "verified; code accepted" and "no code within 30 s" in reasons[7]
    assert "wrong code (1 of 3)" in reasons[8] and "codes refused for 600 s" in reasons[10]
    count = daemon.metrics.registry.get_sample_value
    assert count("accessd_refusals_total", {"door": "door", "refusal": "second_factor_wrong"}) == 2
    assert count("accessd_refusals_total", {"door": "door", "refusal": "pass_expired"}) == 1
    # The code is in no record, log line or hook's environment.
    text = (tmp_path / "a.jsonl").read_text()
    assert CODE not in text and "7771111" not in text
    env = env_log.read_text().splitlines()
    assert CODE not in env_log.read_text()
    assert "deny " + GUARD + " second_factor_missing " in env and "grant   face+code" in env


def _and(first: object, second: object) -> object:
    def both() -> None:
        if callable(first):
            first()
        if callable(second):
            second()
    return both


def test_a_keypad_over_mqtt_and_face_unlock_by_signal(tmp_path: Path, trained_model: Path,
                                                      faces: dict[str, np.ndarray]) -> None:
    """The code comes from a keypad publishing to accessd/<door>/code (a retained one is ignored);
    SIGUSR1 and SIGUSR2 switch face unlock at every door, audited."""
    import os
    import signal
    import time

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from accessd.config import load_config
    from accessd.daemon import Daemon, install_signal_handlers
    from tests.test_mqtt import MOSQUITTO, start_broker

    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (install.sh installs it)")
    broker = start_broker(tmp_path)
    keypad = paho.Client(CallbackAPIVersion.VERSION2)
    keypad.connect("127.0.0.1", broker.port)
    keypad.loop_start()
    try:
        keypad.publish("accessd/door/code", "0000", qos=1, retain=True).wait_for_publish(5)  # left on the broker
        gallery = tmp_path / "g"
        enrol(gallery, GUARD, photos(GUARD)[:5])
        write_rules(gallery / GUARD, parse_rules({"code_hash": hash_code(CODE)}, "guard"))
        cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)},
                           audit={"path": str(tmp_path / "a.jsonl")}, decision={"grant_cooldown_s": 0.5},
                           mqtt={"host": "127.0.0.1", "port": broker.port},
                           policy={"second_factor_hours": ["daily 00:00-24:00"]})
        stop = threading.Event()
        saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
        daemon = Daemon(load_config(cfg), stop=stop)
        install_signal_handlers(stop, None, daemon.request_face_unlock)
        try:
            def connected() -> None:
                assert daemon.mqtt is not None and daemon.mqtt.connected.wait(10)
                time.sleep(0.5)  # the code topic subscribed, and the retained code delivered (and ignored)

            def type_code() -> None:
                keypad.publish("accessd/door/code", CODE, qos=1).wait_for_publish(5)
                time.sleep(0.5)

            def switch_off() -> None:
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(0.3)

            face = faces[GUARD]
            script: list[tuple[np.ndarray, float, object]] = [(face, 0.0, connected)]
            script += [(face, i / 15, type_code if i == 4 else None) for i in range(1, 12)]
            script += [(face, 20 + i / 15, switch_off if i == 0 else None) for i in range(8)]
            assert daemon.run(stop, source=Scripted(script)) == 0
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
        records = audit(tmp_path / "a.jsonl")
        decisions = [(r["decision"], r.get("person") or r.get("verified"), r.get("refusal"), r.get("factor"))
                     for r in records if "decision" in r]
        assert decisions[0] == ("grant", GUARD, None, "face+code"), decisions
        assert ("deny", GUARD, "face_unlock_off", None) in decisions[1:], decisions
        assert not any(d[2] == "second_factor_wrong" for d in decisions)  # the retained 0000 was never judged
        switched = [(r["door"], r["state"], r["by"]) for r in records if r.get("event") == "face_unlock"]
        assert switched == [("door", "off", "signal SIGUSR1")]
    finally:
        keypad.loop_stop()
        broker.proc.terminate()
        broker.proc.wait(timeout=5)


def test_rules_change_live_and_a_bad_file_keeps_the_last_good_rules(tmp_path: Path, trained_model: Path,
                                                                    faces: dict[str, np.ndarray],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import time

    from accessd.config import load_config
    from accessd.daemon import Daemon

    gallery = tmp_path / "g"
    enrol(gallery, STAFF, photos(STAFF)[:5])
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)},
                       audit={"path": str(tmp_path / "a.jsonl")},
                       decision={"grant_cooldown_s": 0.5, "deny_interval_s": 0.5, "lockout_denies": 0},
                       policy={"timezone": "Europe/Berlin"})
    clock = Clock()
    clock.now = dt.datetime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
    daemon = Daemon(load_config(cfg), clock=clock)
    rules_file = gallery / STAFF / "person.yaml"

    def edit(text: str) -> object:
        def write() -> None:
            rules_file.write_text(text)
            time.sleep(2.0)  # the watcher's quiet time and the house loop's turn
        return write

    face = faces[STAFF]
    script: list[tuple[np.ndarray, float, object]] = [(face, i / 15, None) for i in range(6)]
    script += [(face, 30 + i / 15, edit("windows: [tue 10:00-11:00]\n") if i == 0 else None) for i in range(6)]
    script += [(face, 60 + i / 15, edit("windows: [tue 10:00-09:00]\n") if i == 0 else None) for i in range(6)]
    assert daemon.run(threading.Event(), source=Scripted(script)) == 0
    got = [(r["decision"], r.get("refusal")) for r in audit(tmp_path / "a.jsonl") if "decision" in r]
    assert got == [("grant", None), ("deny", "outside_schedule"), ("deny", "outside_schedule")], got
    assert any("person.yaml: windows[0]: '10:00-09:00' ends before it starts" in r.getMessage()
               and "keeping the previous rules" in r.getMessage() for r in caplog.records)
