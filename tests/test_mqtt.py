"""MQTT against a real mosquitto broker on 127.0.0.1 (Debian's package; install.sh installs it)."""

from __future__ import annotations

import json
import logging
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from accessd.config import MqttConfig
from accessd.mqtt import MqttPublisher
from accessd.types import Decision, Outcome
from tests.conftest import REPO, free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(),
                                reason="mosquitto is not installed (install.sh installs it as root on Debian)")
PASSWORD = "s3cret-door-pass"


@dataclass
class Broker:
    port: int
    proc: subprocess.Popen[bytes]
    tls_ca: Path | None = None


def start_broker(tmp: Path, *, password: bool = False, tls: bool = False, port: int = 0) -> Broker:
    port = port or free_port()
    # Persistent sessions survive a broker restart (test_decisions_queued_while_the_broker_is_away).
    lines = [f"listener {port} 127.0.0.1", "persistence true", f"persistence_location {tmp}/",
             "log_dest stderr",
             # Run as root, mosquitto drops to user "mosquitto", which cannot read pytest's tmp dirs.
             f"user {pwd.getpwuid(os.geteuid()).pw_name}"]
    if password:
        pwfile = tmp / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "door", PASSWORD], check=True)
        lines += ["allow_anonymous false", f"password_file {pwfile}"]
    else:
        lines.append("allow_anonymous true")
    ca = None
    if tls:
        ca, key = tmp / "broker.pem", tmp / "broker.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(ca)], check=True, capture_output=True)
        lines += [f"certfile {ca}", f"keyfile {key}"]
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Broker(port, proc, ca)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mosquitto did not start: {proc.stderr.read() if proc.stderr else ''!r}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path)
    yield b
    b.proc.terminate()
    b.proc.wait(timeout=5)


class Subscriber:
    """A plain paho client that records (topic, payload, retain) as they arrive."""

    def __init__(self, broker: Broker, *topics: str, client_id: str = "") -> None:
        self.messages: queue.Queue[tuple[str, str, bool]] = queue.Queue()
        # With a client id, a persistent session: the broker keeps qos 1 messages while we are away.
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not client_id)
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload.decode(), m.retain))
        self.client.connect("127.0.0.1", broker.port)
        for t in topics:
            self.client.subscribe(t, qos=1)
        self.client.loop_start()

    def next(self, topic: str, timeout: float = 10.0) -> tuple[str, bool]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                t, payload, retain = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if t == topic:
                return payload, retain
        raise AssertionError(f"nothing on {topic} within {timeout}s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def decision() -> dict[str, object]:
    d = Decision(outcome=Outcome.GRANT, person="alice", score=0.91, ratio=0.8, frame=12, ts=1.0, source="test",
                 reason="verified")
    return {"ts": "2026-11-23T12:00:00.000+00:00", **d.to_record()}


def test_decisions_published_and_availability_retained(broker: Broker) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, topic="door/{door}/decision", availability_topic="door/avail")
    pub = MqttPublisher(cfg)
    try:
        assert pub.connected.wait(10)
        sub = Subscriber(broker, "door/#")
        # This subscriber may be there before "online" reaches the broker (live, not retained) ...
        assert sub.next("door/avail")[0] == "online"
        # ... but one arriving after it still learns the daemon is up: it is retained.
        joined = Subscriber(broker, "door/avail")
        assert joined.next("door/avail") == ("online", True)
        joined.close()
        pub.publish(decision(), "front")  # {door} in the topic is the door's name
        payload, retained = sub.next("door/front/decision")
        assert not retained
        assert json.loads(payload) == decision()
    finally:
        pub.close()
    assert sub.next("door/avail") == ("offline", False)
    late = Subscriber(broker, "door/avail")
    assert late.next("door/avail") == ("offline", True)
    sub.close()
    late.close()


def test_killed_daemon_goes_offline_through_the_last_will(broker: Broker) -> None:
    script = (
        "import sys, time\n"
        "from accessd.config import MqttConfig\n"
        "from accessd.mqtt import MqttPublisher\n"
        f"p = MqttPublisher(MqttConfig(host='127.0.0.1', port={broker.port}))\n"
        "assert p.connected.wait(10)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        sub = Subscriber(broker, "accessd/availability")
        assert sub.next("accessd/availability")[0] == "online"  # retained or live: retention is tested above
        proc.send_signal(signal.SIGKILL)  # no chance to say goodbye: the broker must
        assert sub.next("accessd/availability") == ("offline", False)
        sub.close()
    finally:
        proc.kill()
        proc.wait()


def test_password_from_credentials_and_never_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    b = start_broker(tmp_path, password=True)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(PASSWORD + "\n")
    (creds / "wrong").write_text("not-the-password\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    caplog.set_level(logging.DEBUG)
    try:
        wrong = MqttPublisher(MqttConfig(host="127.0.0.1", port=b.port, username="door",
                                         password_credential="wrong"))
        try:
            deadline = time.monotonic() + 10
            while "connection refused" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "connection refused" in caplog.text  # said once, named the broker, no crash
            assert not wrong.connected.is_set()
        finally:
            wrong.close()
        right = MqttPublisher(MqttConfig(host="127.0.0.1", port=b.port, username="door",
                                         password_credential="mqtt-password"))
        try:
            assert right.connected.wait(10)
        finally:
            right.close()
    finally:
        b.proc.terminate()
        b.proc.wait(timeout=5)
    assert PASSWORD not in caplog.text and "not-the-password" not in caplog.text


def test_tls_with_the_brokers_ca(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b = start_broker(tmp_path, tls=True)
    try:
        trusted = MqttPublisher(MqttConfig(host="127.0.0.1", port=b.port, tls=True, ca_file=b.tls_ca))
        try:
            assert trusted.connected.wait(10)
        finally:
            trusted.close()
        # Without that CA (the system's bundle) the self-signed broker must be refused.
        untrusted = MqttPublisher(MqttConfig(host="127.0.0.1", port=b.port, tls=True))
        try:
            assert not untrusted.connected.wait(3)
            assert "CERTIFICATE_VERIFY_FAILED" in caplog.text  # the log says why
        finally:
            untrusted.close()
    finally:
        b.proc.terminate()
        b.proc.wait(timeout=5)


def test_decisions_queued_while_the_broker_is_away(tmp_path: Path) -> None:
    b = start_broker(tmp_path)
    sub = Subscriber(b, "accessd/door/decision", client_id="door-relay")
    pub = MqttPublisher(MqttConfig(host="127.0.0.1", port=b.port))
    try:
        assert pub.connected.wait(10)
        time.sleep(0.5)  # let the subscription land before the broker goes
        b.proc.terminate()
        b.proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while pub.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pub.connected.is_set()
        t0 = time.monotonic()
        pub.publish(decision(), "door")  # must neither block nor raise with the broker down
        assert time.monotonic() - t0 < 0.5
        # The broker comes back on the same port with the relay's session; the publisher
        # reconnects by itself and delivers what it queued.
        b = start_broker(tmp_path, port=b.port)
        assert pub.connected.wait(40)
        payload, _ = sub.next("accessd/door/decision", timeout=40)
        assert json.loads(payload)["person"] == "alice"
    finally:
        sub.close()
        pub.close()
        b.proc.terminate()
        b.proc.wait(timeout=5)


def test_daemon_publishes_every_audited_decision(tmp_path: Path, broker: Broker, trained_model: Path) -> None:
    from tests.test_daemon import PERSON, STRANGER, audit, enrol, photos, run_daemon, write_config, write_video

    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:10])
    video = tmp_path / "door.avi"
    write_video(video, [photos(PERSON)[20:26], photos(STRANGER)[:6]], 5)
    log = tmp_path / "audit.jsonl"
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)},
                       audit={"path": str(log)}, mqtt={"host": "127.0.0.1", "port": broker.port},
                       decision={"deny_interval_s": 1.0})
    sub = Subscriber(broker, "accessd/#")
    try:
        result = run_daemon("run", "--config", str(cfg), "--source", str(video))
        assert result.returncode == 0, result.stderr[-3000:]
        records = audit(log)
        assert {r["decision"] for r in records} == {"grant", "deny"}, records
        assert sub.next("accessd/availability") == ("online", False)
        published = [json.loads(sub.next("accessd/door/decision")[0]) for _ in records]
        assert published == records  # the same JSON as the audit log, in order
        assert sub.next("accessd/availability") == ("offline", False)
    finally:
        sub.close()


def test_a_suspected_spoof_is_published_like_any_decision(tmp_path: Path, broker: Broker,
                                                          trained_model: Path) -> None:
    """An enrolled person's photos held up (they never blink): refused as spoof_suspected, and on MQTT."""
    from tests.test_daemon import PERSON, audit, enrol, photos, run_daemon, write_config, write_video

    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:10])
    video = tmp_path / "door.avi"
    write_video(video, [photos(PERSON)[20:24]], 10)  # 4 s at 10 frames/s
    log = tmp_path / "audit.jsonl"
    cfg = write_config(tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)},
                       audit={"path": str(log)}, mqtt={"host": "127.0.0.1", "port": broker.port},
                       decision={"deny_interval_s": 1.0}, liveness={"max_wait_s": 1.0, "instrument": False})
    sub = Subscriber(broker, "accessd/door/decision")
    try:
        result = run_daemon("run", "--config", str(cfg), "--source", str(video))
        assert result.returncode == 0, result.stderr[-3000:]
        records = audit(log)
        assert records and {r["decision"] for r in records} == {"spoof_suspected"}, records
        assert records[0]["check"] == "blink" and records[0]["closest"] == PERSON
        published = [json.loads(sub.next("accessd/door/decision")[0]) for _ in records]
        assert published == records
    finally:
        sub.close()
