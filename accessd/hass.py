"""Home Assistant MQTT discovery: each door appears as a device with its entities.

Opt in with `mqtt.discovery: true`. Per door (HA's documented MQTT schemas):
  event          decision        granted, denied, unknown, spoof_suspected, lockout; person, score, reason
  sensor         last person     the person last let in
  binary_sensor  face            a face at the door (occupancy)
  binary_sensor  camera          the camera is down (problem)
  image          snapshot        the last decision's snapshot (when audit.snapshots_dir is set)
  switch         face unlock     off: nobody is let in by face (audited)
  button         open now        runs the door's grant hooks (audited)

Discovery configs are retained and sent again at every connect and whenever
Home Assistant announces itself on `<prefix>/status`. A door removed from the
config has its configs replaced by empty retained messages, which is how Home
Assistant deletes entities (the doors announced are remembered in state_dir).
Commands arrive on paho's network thread and are only queued here: the frame
loop applies them. A retained command is ignored, so nothing left on the broker
can open a door or switch face unlock when the daemon reconnects.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from accessd.config import MqttConfig
from accessd.mqtt import MqttPublisher
from accessd.statefile import write_json

log = logging.getLogger(__name__)

EVENT_TYPES = ("granted", "denied", "unknown", "spoof_suspected", "lockout")
ENTITIES = (("event", "decision"), ("sensor", "last_person"), ("binary_sensor", "face"),
            ("binary_sensor", "camera"), ("image", "snapshot"), ("switch", "face_unlock"), ("button", "open"))
ON, OFF, PRESS = "ON", "OFF", "PRESS"
BY = "home-assistant"  # who a command came from, in the audit log (MQTT names no user)


@dataclass(frozen=True)
class Command:
    door: str
    action: Literal["face_unlock", "open"]
    on: bool = True  # face_unlock: the switch's new state


def event_type(record: dict[str, object]) -> str:
    """The Home Assistant event type of an audit record."""
    decision, reason = record.get("decision"), str(record.get("reason", ""))
    if decision == "grant":
        return "granted"
    if decision == "spoof_suspected":
        return "spoof_suspected"
    if "lock" in reason and "out" in reason:
        return "lockout"
    return "unknown" if reason.startswith("no match") or not record.get("closest") else "denied"


def door_topic(config: MqttConfig, door: str) -> str:
    return config.door_topic.replace("{door}", door)


def config_topic(config: MqttConfig, door: str, component: str, object_id: str) -> str:
    return f"{config.discovery_prefix}/{component}/accessd_{door}/{object_id}/config"


def discovery(config: MqttConfig, door: str, snapshots: bool, version: str) -> dict[str, dict[str, Any]]:
    """Config topic -> payload for every entity of `door` (the image only with snapshots on)."""
    base, node = door_topic(config, door), f"accessd_{door}"
    common = {
        "device": {"identifiers": [node], "name": f"accessd {door}", "manufacturer": "accessd",
                   "model": "face-verification door", "sw_version": version},
        "availability_topic": config.availability_topic,
        "payload_available": "online", "payload_not_available": "offline",
    }
    entities: dict[str, dict[str, Any]] = {
        "decision": {"name": "Decision", "state_topic": f"{base}/event", "event_types": list(EVENT_TYPES)},
        "last_person": {"name": "Last person let in", "state_topic": f"{base}/last_person",
                        "icon": "mdi:account-check"},
        "face": {"name": "Face at the door", "state_topic": f"{base}/face", "device_class": "occupancy",
                 "payload_on": ON, "payload_off": OFF},
        "camera": {"name": "Camera", "state_topic": f"{base}/camera", "device_class": "problem",
                   "payload_on": ON, "payload_off": OFF, "entity_category": "diagnostic"},
        "snapshot": {"name": "Last snapshot", "image_topic": f"{base}/snapshot", "content_type": "image/jpeg"},
        "face_unlock": {"name": "Face unlock", "command_topic": f"{base}/face_unlock/set",
                        "state_topic": f"{base}/face_unlock", "payload_on": ON, "payload_off": OFF,
                        "retain": False, "icon": "mdi:face-recognition"},
        "open": {"name": "Open now", "command_topic": f"{base}/open/press", "payload_press": PRESS,
                 "retain": False, "icon": "mdi:door-open"},
    }
    out = {}
    for component, object_id in ENTITIES:
        if object_id == "snapshot" and not snapshots:
            continue
        payload = {**entities[object_id], "unique_id": f"{node}_{object_id}", "object_id": f"{node}_{object_id}",
                   **common}
        out[config_topic(config, door, component, object_id)] = payload
    return out


class HomeAssistant:
    def __init__(self, mqtt: MqttPublisher, config: MqttConfig, state_dir: Path, snapshots: bool,
                 version: str = "0.1.0") -> None:
        self.mqtt, self.config, self.snapshots, self.version = mqtt, config, snapshots, version
        self._announced_file = state_dir / "hass-doors.json"
        self._lock = threading.Lock()
        self._doors: dict[str, bool] = {}  # door -> face unlock on
        self._face: dict[str, bool] = {}
        self._camera_ok: dict[str, bool] = {}
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        mqtt.subscribe(f"{config.discovery_prefix}/status", self._on_status)
        mqtt.on_connected.append(self.announce)

    def set_doors(self, doors: dict[str, bool]) -> None:
        """The doors now (name -> face unlock on): announce them, remove the ones gone, listen for commands."""
        with self._lock:
            self._doors = dict(doors)
        for door in doors:
            base = door_topic(self.config, door)
            self.mqtt.subscribe(f"{base}/face_unlock/set", functools.partial(self._on_switch, door))
            self.mqtt.subscribe(f"{base}/open/press", functools.partial(self._on_press, door))
        if self.mqtt.connected.is_set():
            self.announce()

    def announce(self) -> None:
        """Send every door's discovery and current states; empty the configs of doors no longer there."""
        with self._lock:
            doors = dict(self._doors)
        for door, unlock in doors.items():
            for topic, payload in discovery(self.config, door, self.snapshots, self.version).items():
                self.mqtt.send(topic, json.dumps(payload), retain=True)
            if not self.snapshots:  # snapshots were turned off: the image entity goes
                self.mqtt.send(config_topic(self.config, door, "image", "snapshot"), "", retain=True)
            self.face_unlock(door, unlock)
            self.mqtt.send(f"{door_topic(self.config, door)}/face", ON if self._face.get(door) else OFF, retain=True)
            if door in self._camera_ok:
                self.camera(door, self._camera_ok[door], force=True)
        for gone in sorted(self._previously_announced() - set(doors)):
            log.info("Home Assistant: door %s is no longer configured; removing its entities", gone)
            for component, object_id in ENTITIES:
                self.mqtt.send(config_topic(self.config, gone, component, object_id), "", retain=True)
        self._remember(set(doors))
        log.info("Home Assistant discovery sent for %d door(s)", len(doors))

    def _previously_announced(self) -> set[str]:
        try:
            return set(json.loads(self._announced_file.read_text()))
        except (OSError, ValueError, TypeError):
            return set()

    def _remember(self, doors: set[str]) -> None:
        try:
            write_json(self._announced_file, sorted(doors))
        except OSError as exc:
            log.error("cannot remember the doors announced to Home Assistant in %s: %s", self._announced_file,
                      exc.strerror or exc)

    def _on_status(self, payload: bytes, _retained: bool) -> None:
        if payload.strip() == b"online":  # Home Assistant (re)started: it forgot non-retained states
            self.announce()

    def _on_switch(self, door: str, payload: bytes, retained: bool) -> None:
        if retained:
            log.warning("Home Assistant: ignored a retained face-unlock command for door %s", door)
            return
        text = payload.decode(errors="replace").strip()
        if text not in (ON, OFF):
            log.warning("Home Assistant: face-unlock command for door %s must be ON or OFF (got %r)", door, text[:20])
            return
        self._commands.put(Command(door, "face_unlock", text == ON))

    def _on_press(self, door: str, payload: bytes, retained: bool) -> None:
        if retained:
            log.warning("Home Assistant: ignored a retained open-now command for door %s", door)
            return
        if payload.strip() != PRESS.encode():
            log.warning("Home Assistant: open-now command for door %s must be %s", door, PRESS)
            return
        self._commands.put(Command(door, "open"))

    def commands(self) -> list[Command]:
        """Commands received since the last call (the frame loop applies them)."""
        out = []
        while True:
            try:
                out.append(self._commands.get_nowait())
            except queue.Empty:
                return out

    def decision(self, door: str, record: dict[str, object], snapshot: Path | None) -> None:
        event = {"event_type": event_type(record), **{k: record.get(k) for k in ("person", "score", "reason", "ts")}}
        if record.get("closest") is not None:
            event["closest"] = record["closest"]
        base = door_topic(self.config, door)
        self.mqtt.send(f"{base}/event", json.dumps(event))
        if record.get("decision") == "grant" and record.get("person"):
            self.mqtt.send(f"{base}/last_person", str(record["person"]), retain=True)
        if self.snapshots and snapshot is not None:
            try:
                self.mqtt.send(f"{base}/snapshot", snapshot.read_bytes(), retain=True)
            except OSError as exc:
                log.error("Home Assistant: snapshot %s not sent: %s", snapshot, exc.strerror or exc)

    def face(self, door: str, present: bool) -> None:
        if self._face.get(door) != present:
            self._face[door] = present
            self.mqtt.send(f"{door_topic(self.config, door)}/face", ON if present else OFF, retain=True)

    def camera(self, door: str, ok: bool, force: bool = False) -> None:
        if force or self._camera_ok.get(door) != ok:
            self._camera_ok[door] = ok
            self.mqtt.send(f"{door_topic(self.config, door)}/camera", OFF if ok else ON, retain=True)

    def face_unlock(self, door: str, on: bool) -> None:
        with self._lock:
            if door in self._doors:
                self._doors[door] = on
        self.mqtt.send(f"{door_topic(self.config, door)}/face_unlock", ON if on else OFF, retain=True)
