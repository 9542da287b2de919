"""Home Assistant MQTT discovery: the payloads against HA's documented schemas, and a daemon on a real broker."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from accessd.config import MqttConfig
from accessd.hass import ENTITIES, EVENT_TYPES, discovery, event_type
from tests.conftest import REPO, SHARED
from tests.test_console import ShowCamera
from tests.test_daemon import OTHER_ENROLLED, PERSON, audit, enrol, photos, write_config
from tests.test_mqtt import MOSQUITTO, Broker, start_broker

# The keys Home Assistant documents for each MQTT platform we announce (home-assistant.io/integrations/
# <platform>.mqtt, release 2024.3), the ones we may send, and the required ones. A key HA does not know
# makes it refuse the whole discovery message, so an unknown key here is a failure.
COMMON = {"name", "unique_id", "object_id", "device", "availability_topic", "payload_available",
          "payload_not_available", "icon", "entity_category", "enabled_by_default", "qos"}
SCHEMA: dict[str, tuple[set[str], set[str]]] = {  # platform: (required, optional)
    "event": ({"state_topic", "event_types"}, {"device_class", "value_template", "json_attributes_topic"}),
    "sensor": ({"state_topic"}, {"device_class", "unit_of_measurement", "value_template", "expire_after"}),
    "binary_sensor": ({"state_topic"}, {"device_class", "payload_on", "payload_off", "value_template",
                                        "expire_after", "off_delay"}),
    "image": (set(), {"image_topic", "url_topic", "content_type", "image_encoding", "url_template"}),
    "switch": ({"command_topic"}, {"state_topic", "payload_on", "payload_off", "state_on", "state_off",
                                   "retain", "optimistic", "device_class", "value_template"}),
    "button": ({"command_topic"}, {"payload_press", "retain", "device_class", "command_template"}),
}
BINARY_SENSOR_CLASSES = {"occupancy", "problem", "connectivity", "motion", "presence", "door", "lock"}
DEVICE_KEYS = {"identifiers", "connections", "name", "manufacturer", "model", "sw_version", "hw_version",
               "suggested_area", "via_device", "configuration_url"}
ID = re.compile(r"[a-zA-Z0-9_-]+")


def check_against_schema(topic: str, payload: dict[str, Any], prefix: str = "homeassistant") -> str:
    """The platform of one discovery message, after checking it as Home Assistant would."""
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == prefix and parts[4] == "config", topic
    platform, node, object_id = parts[1:4]
    assert platform in SCHEMA and ID.fullmatch(node) and ID.fullmatch(object_id), topic
    required, optional = SCHEMA[platform]
    assert required <= set(payload), (topic, required - set(payload))
    assert set(payload) <= required | optional | COMMON, (topic, set(payload) - required - optional - COMMON)
    assert set(payload["device"]) <= DEVICE_KEYS and payload["device"]["identifiers"], topic
    for key, value in payload.items():
        if key.endswith("_topic"):
            assert isinstance(value, str) and value and "+" not in value and "#" not in value, (topic, key)
    if platform == "event":
        assert payload["event_types"] and all(isinstance(t, str) for t in payload["event_types"])
    if platform == "binary_sensor" and "device_class" in payload:
        assert payload["device_class"] in BINARY_SENSOR_CLASSES
    if platform == "image":  # exactly one source; a raw image payload needs its content type
        assert ("image_topic" in payload) != ("url_topic" in payload), topic
        assert "image_topic" not in payload or payload.get("content_type", "").startswith("image/"), topic
    if platform in ("switch", "button"):
        assert payload.get("retain", False) is False, "a retained command would replay at every reconnect"
    return platform


def test_every_door_is_a_device_whose_entities_follow_home_assistants_schemas() -> None:
    config = MqttConfig(host="broker", discovery=True)
    seen_ids: set[str] = set()
    for door in ("front", "garage"):
        payloads = discovery(config, door, snapshots=True, version="0.1.0")
        platforms = sorted(check_against_schema(t, p) for t, p in payloads.items())
        assert platforms == sorted(c for c, _ in ENTITIES)
        ids = {p["unique_id"] for p in payloads.values()}
        assert len(ids) == len(payloads) and not ids & seen_ids  # unique across doors too
        seen_ids |= ids
        assert {p["device"]["identifiers"][0] for p in payloads.values()} == {f"accessd_{door}"}
        assert all(f"accessd/{door}/" in json.dumps(p) for p in payloads.values())
    no_snapshots = discovery(config, "front", snapshots=False, version="0.1.0")
    assert "image" not in {t.split("/")[1] for t in no_snapshots}


def test_event_types_name_what_happened() -> None:
    assert event_type({"decision": "grant", "person": "ann"}) == "granted"
    assert event_type({"decision": "spoof_suspected", "closest": "ann"}) == "spoof_suspected"
    assert event_type({"decision": "deny", "reason": "no match", "closest": "ann"}) == "unknown"
    assert event_type({"decision": "deny", "reason": "locked out (120 s left)"}) == "lockout"
    assert event_type({"decision": "deny", "reason": "face unlock off", "closest": "ann"}) == "denied"
    assert set(EVENT_TYPES) == {"granted", "denied", "unknown", "spoof_suspected", "lockout"}


class Listener:
    """A paho client keeping every message's bytes and retained flag (snapshots are JPEG bytes)."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload), m.retain))
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def wait(self, what: str, check: Any, timeout: float = 60.0) -> tuple[str, bytes, bool]:
        """The first message (seen before or arriving) for which check(topic, payload, retained) holds."""
        for m in self.seen:
            if check(*m):
                return m
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(m)
            if check(*m):
                return m
        raise AssertionError(f"no {what} within {timeout}s; topics seen: {sorted({t for t, _, _ in self.seen})}")

    def forget(self) -> None:
        """Drop everything received so far: later waits see only what comes after."""
        while not self.messages.empty():
            self.messages.get_nowait()
        self.seen.clear()

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed (install.sh installs it)")
def test_home_assistant_sees_each_door_and_commands_it(tmp_path: Path, trained_model: Path) -> None:
    """Two doors on a real broker: every entity announced and updated; the switch and the button act and are
    audited; retained commands left on the broker do nothing; a door taken out of the config is removed."""
    broker = start_broker(tmp_path)
    camera = ShowCamera()
    camera.show(photos(PERSON)[0])
    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[1:4])
    enrol(gallery, OTHER_ENROLLED, photos(OTHER_ENROLLED)[:3])
    log, hooks = tmp_path / "audit.jsonl", tmp_path / "hooks.txt"
    hook = {"argv": [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'a').write("
                     "os.environ['ACCESSD_DOOR'] + ' ' + os.environ['ACCESSD_REASON'] + '\\n')", str(hooks)],
            "on": ["grant"]}
    doors = [{"name": "front", "source": {"uri": camera.url, "reconnect_max_s": 1.0}, "actions": {"hooks": [hook]}},
             {"name": "garage", "source": {"uri": "/dev/shm/accessd-no-such-camera"}}]
    sections: dict[str, Any] = dict(
        gallery={"dir": str(gallery)}, audit={"path": str(log), "snapshots_dir": str(tmp_path / "snaps")},
        decision={"grant_cooldown_s": 1.0, "deny_interval_s": 1.0, "lockout_denies": 0},
        mqtt={"host": "127.0.0.1", "port": broker.port, "discovery": True})
    cfg = write_config(tmp_path / "config.yaml", trained_model, doors=doors, **sections)
    ha = Listener(broker, "#")
    # Left on the broker before the daemon starts (a client that published with retain): never acted on.
    ha.publish("accessd/front/open/press", "PRESS", retain=True)
    ha.publish("accessd/front/face_unlock/set", "OFF", retain=True)

    def start() -> tuple[subprocess.Popen[str], list[str]]:
        proc = subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg)], cwd=REPO,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "ACCESSD_SHARED": str(SHARED)})
        lines: list[str] = []
        stream = proc.stderr
        assert stream is not None
        threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True).start()
        return proc, lines

    def stop(proc: subprocess.Popen[str], lines: list[str]) -> str:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        time.sleep(0.2)
        assert proc.returncode == 0, "".join(lines)[-3000:]
        return "".join(lines)

    proc, lines = start()
    try:
        # Every entity of both doors announced (retained), each as Home Assistant documents it.
        configs: dict[str, dict[str, Any]] = {}
        for door in ("front", "garage"):
            for component, object_id in ENTITIES:
                topic = f"homeassistant/{component}/accessd_{door}/{object_id}/config"
                _, payload, _ = ha.wait(topic, lambda t, p, r, topic=topic: t == topic and p)
                configs[topic] = json.loads(payload)
                check_against_schema(topic, configs[topic])
        # A grant at the front: the event, the last person, the snapshot, a face present.
        _, event, _ = ha.wait("a granted event", lambda t, p, r: t == "accessd/front/event"
                              and json.loads(p)["event_type"] == "granted")
        assert json.loads(event)["person"] == PERSON and json.loads(event)["score"] > 0.5
        assert ha.wait("the last person", lambda t, p, r: t == "accessd/front/last_person")[1].decode() == PERSON
        assert ha.wait("the snapshot", lambda t, p, r: t == "accessd/front/snapshot")[1][:3] == b"\xff\xd8\xff"
        ha.wait("a face at the front", lambda t, p, r: t == "accessd/front/face" and p == b"ON")
        ha.wait("the garage camera's problem", lambda t, p, r: t == "accessd/garage/camera" and p == b"ON")
        ha.wait("the front camera fine", lambda t, p, r: t == "accessd/front/camera" and p == b"OFF")
        # The retained commands did nothing: face unlock on, nothing opened by anyone.
        assert ha.wait("front face unlock state", lambda t, p, r: t == "accessd/front/face_unlock")[1] == b"ON"
        # Switch face unlock off: the next verified face is refused and says why; audited with who.
        ha.publish("accessd/front/face_unlock/set", "OFF")
        ha.wait("face unlock off", lambda t, p, r: t == "accessd/front/face_unlock" and p == b"OFF")
        ha.wait("a refusal", lambda t, p, r: t == "accessd/front/event" and json.loads(p)["event_type"] == "denied"
                and json.loads(p)["reason"] == "face unlock off" and json.loads(p)["closest"] == PERSON)
        # The button: the front door's grant hooks run, audited with who pressed it.
        ha.publish("accessd/front/open/press", "PRESS")
        deadline = time.monotonic() + 20
        while "opened by home-assistant" not in (hooks.read_text() if hooks.exists() else ""):
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.1)
        # Home Assistant restarts: discovery is sent again.
        before = len([m for m in ha.seen if m[0].endswith("/config")])
        ha.publish("homeassistant/status", "online")
        ha.wait("discovery again", lambda t, p, r: t.endswith("/config") and
                len([m for m in ha.seen if m[0].endswith("/config")]) > before)
    finally:
        err = stop(proc, lines) if proc.poll() is None else "".join(lines)
        proc.kill()
    assert "Traceback" not in err, err[-3000:]
    records = audit(log)
    switches = [r for r in records if r.get("event") == "face_unlock"]
    assert [(r["door"], r["state"], r["by"]) for r in switches] == [("front", "off", "home-assistant")]
    opened = [r for r in records if r.get("manual")]
    assert [(r["door"], r["decision"], r["by"]) for r in opened] == [("front", "grant", "home-assistant")]
    face_grants = [r for r in records if r.get("decision") == "grant" and not r.get("manual")]
    assert face_grants and all(r["door"] == "front" and r["person"] == PERSON for r in face_grants)
    # No face grant after the switch went off (the records are in order; the switch record splits them).
    after_off = records[records.index(switches[0]):]
    assert not [r for r in after_off if r.get("decision") == "grant" and not r.get("manual")], after_off
    assert hooks.read_text().count("opened by home-assistant") == 1  # the retained PRESS opened nothing

    # The garage is taken out of the config: its entities are removed (empty retained configs); the front's
    # face unlock is still off after the restart.
    cfg = write_config(tmp_path / "config.yaml", trained_model, doors=doors[:1], **sections)
    ha.forget()
    proc, lines = start()
    try:
        for component, object_id in ENTITIES:
            topic = f"homeassistant/{component}/accessd_garage/{object_id}/config"
            ha.wait(f"{topic} emptied", lambda t, p, r, topic=topic: t == topic and p == b"")
        assert ha.wait("front face unlock", lambda t, p, r: t == "accessd/front/face_unlock")[1] == b"OFF"
        # A Home Assistant connecting now finds the front door's entities and none of the garage's.
        late = Listener(broker, "homeassistant/#")
        late.wait("the front door's retained config", lambda t, p, r: "accessd_front" in t and r, timeout=10)
        time.sleep(1.0)
        late.close()
        assert not [t for t, p, _ in late.seen if "accessd_garage" in t and p], late.seen
    finally:
        if proc.poll() is None:
            stop(proc, lines)
        proc.kill()
        ha.close()
        camera.close()
        broker.proc.terminate()
        broker.proc.wait(timeout=5)
