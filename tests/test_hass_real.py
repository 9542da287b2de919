"""Home Assistant itself (2024.3.3, its own venv) as the MQTT discovery client: what it makes of a door, and
its switch and button acting on the daemon, read back through its REST API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO, SHARED, free_port, terminate
from tests.test_console import ShowCamera
from tests.test_daemon import PERSON, audit, enrol, photos, write_config
from tests.test_mqtt import MOSQUITTO, Broker, start_broker

HA_PYTHON = REPO / ".venv-ha" / "bin" / "python"  # install.sh: requirements-ha.txt


class HomeAssistant:
    """A fresh Home Assistant: onboarded (a user and a token) and given the MQTT integration, by its own API."""

    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "ha"
        config.mkdir()
        # Not default_config: some of its integrations' pins have drifted. Only what this test needs.
        (config / "configuration.yaml").write_text(
            "homeassistant:\n  name: accessd-test\n  time_zone: UTC\n  unit_system: metric\n  country: DE\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\napi:\nconfig:\nonboarding:\n")
        self.log = tmp / "ha.log"
        self.proc = subprocess.Popen([str(HA_PYTHON), "-m", "homeassistant", "-c", str(config), "--skip-pip"],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self._wait(lambda: requests.get(f"{self.url}/api/onboarding", timeout=2).status_code == 200, 180,
                   "Home Assistant's API")
        client = f"{self.url}/"
        code = requests.post(f"{self.url}/api/onboarding/users", timeout=30, json={
            "client_id": client, "name": "Test", "username": "test", "password": "a test password",
            "language": "en"}).json()["auth_code"]
        self.token = requests.post(f"{self.url}/auth/token", timeout=30, data={
            "grant_type": "authorization_code", "code": code, "client_id": client}).json()["access_token"]
        flow = self.api("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        entry = self.api("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                         {"broker": "127.0.0.1", "port": broker.port})
        assert entry["type"] == "create_entry" and entry["result"]["state"] == "loaded", entry

    def api(self, method: str, path: str, body: object = None) -> Any:
        r = requests.request(method, self.url + path, json=body, timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.api("GET", "/api/states") if "accessd" in s["entity_id"]}

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if check():
                    return
            except (requests.ConnectionError, KeyError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n" + self.log.read_text()[-3000:])

    def wait_state(self, entity: str, check: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 60) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def ok() -> bool:
            state = self.states().get(entity)
            if state is not None and check(state):
                found.append(state)
                return True
            return False

        self._wait(ok, timeout, f"{what} ({entity}: {self.states().get(entity)})")
        return found[0]

    def close(self) -> None:
        terminate(self.proc)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (install.sh installs it)")
    b = start_broker(tmp_path)
    yield b
    b.proc.terminate()
    b.proc.wait(timeout=5)


@pytest.mark.skipif(not HA_PYTHON.exists(), reason="Home Assistant is not installed (install.sh puts it in .venv-ha)")
def test_home_assistant_sees_the_door_and_its_switch_and_button_act(tmp_path: Path, trained_model: Path,
                                                                      broker: Broker) -> None:
    ha = HomeAssistant(tmp_path, broker)
    camera = ShowCamera()
    camera.show(photos(PERSON)[12])
    daemon = None
    try:
        gallery = tmp_path / "g"
        enrol(gallery, PERSON, photos(PERSON)[:5])
        log = tmp_path / "audit.jsonl"
        cfg = write_config(
            tmp_path / "config.yaml", trained_model, gallery={"dir": str(gallery)},
            audit={"path": str(log), "snapshots_dir": str(tmp_path / "snaps")},
            decision={"grant_cooldown_s": 1.0}, mqtt={"host": "127.0.0.1", "port": broker.port, "discovery": True},
            doors=[{"name": "front", "source": {"uri": camera.url, "reconnect_max_s": 1.0}}])  # type: ignore[arg-type]
        daemon = subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg)], cwd=REPO,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "ACCESSD_SHARED": str(SHARED)})
        lines: list[str] = []
        stream = daemon.stderr
        assert stream is not None
        threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True).start()

        # Home Assistant made a device of the door, with every entity, and follows its state.
        last = ha.wait_state("sensor.accessd_front_last_person", lambda s: s["state"] == PERSON, "the last person")
        assert last["attributes"]["friendly_name"] == "accessd front Last person let in"
        event = ha.wait_state("event.accessd_front_decision", lambda s: s["attributes"].get("event_type") == "granted",
                              "a granted event")
        assert event["attributes"]["person"] == PERSON and event["attributes"]["score"] > 0.5
        ha.wait_state("binary_sensor.accessd_front_face", lambda s: s["state"] == "on", "a face at the door")
        ha.wait_state("binary_sensor.accessd_front_camera", lambda s: s["state"] == "off", "the camera fine")
        ha.wait_state("switch.accessd_front_face_unlock", lambda s: s["state"] == "on", "face unlock on")
        image = ha.wait_state("image.accessd_front_snapshot", lambda s: s["state"] not in ("unknown", "unavailable"),
                              "a snapshot")
        picture = requests.get(ha.url + image["attributes"]["entity_picture"], timeout=30)
        assert picture.status_code == 200 and picture.content[:3] == b"\xff\xd8\xff"  # the JPEG, served by HA
        assert "button.accessd_front_open" in ha.states()

        # Its switch turns face unlock off at the door; its button opens it. Both audited as Home Assistant's.
        ha.api("POST", "/api/services/switch/turn_off", {"entity_id": "switch.accessd_front_face_unlock"})
        ha.wait_state("switch.accessd_front_face_unlock", lambda s: s["state"] == "off", "face unlock off")
        refused = ha.wait_state("event.accessd_front_decision", lambda s: s["attributes"].get("event_type") == "denied",
                                "a refusal")
        assert refused["attributes"]["reason"] == "face unlock off"
        ha.api("POST", "/api/services/button/press", {"entity_id": "button.accessd_front_open"})
        deadline = time.monotonic() + 30
        while not any(r.get("manual") for r in audit(log)):
            assert time.monotonic() < deadline and daemon.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.3)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, "".join(lines)[-3000:]
        # The daemon's last will: Home Assistant shows the door unavailable.
        ha.wait_state("sensor.accessd_front_last_person", lambda s: s["state"] == "unavailable", "the door gone")
    finally:
        if daemon is not None:
            daemon.kill()
        camera.close()
        ha.close()
    records = audit(log)
    assert [(r["state"], r["by"]) for r in records if r.get("event") == "face_unlock"] == [("off", "home-assistant")]
    assert [(r["decision"], r["by"]) for r in records if r.get("manual")] == [("grant", "home-assistant")]
    assert "ERROR" not in "".join(lines) and "Traceback" not in "".join(lines)
    # Home Assistant took every discovery payload: it logs an error naming the topic for one it refuses.
    assert "Error" not in "\n".join(line for line in ha.log.read_text().splitlines() if "accessd" in line)
