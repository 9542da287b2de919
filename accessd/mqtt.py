"""Decisions over MQTT (paho-mqtt), for Home Assistant, Node-RED and door relays.

Each decision's audit record is published as JSON to `mqtt.topic`. The
availability topic is retained: "online" once connected, and "offline" both on
a clean stop and, as the broker-held last will, when the daemon dies or its
link drops. paho runs the network on its own thread and reconnects by itself,
so `publish` never blocks the frame loop; messages sent while the broker is
away are queued (bounded) and delivered on reconnect. MQTT is a notification
channel, never the record: the audit log is written first.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from accessd.config import MqttConfig, read_credential

log = logging.getLogger(__name__)

MAX_QUEUED = 1000  # decisions held while the broker is away; older ones are in the audit log anyway
CLOSE_TIMEOUT_S = 2.0


class MqttPublisher:
    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.connected = threading.Event()
        self._last_problem = ""
        # Read now so a missing credential fails start-up, not the first decision.
        password = read_credential(config.password_credential) if config.password_credential else None
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                             protocol=paho.MQTTv311, reconnect_on_failure=True)
        client.will_set(config.availability_topic, "offline", qos=1, retain=True)
        if config.username:
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self._client = client
        # Subscriptions (topic -> handler of payload and retained flag), made again at every connect,
        # and hooks run at every connect (Home Assistant discovery is re-announced then).
        self._handlers: dict[str, Callable[[bytes, bool], None]] = {}
        self.on_connected: list[Callable[[], None]] = []
        client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        client.loop_start()

    @property
    def where(self) -> str:
        scheme = "mqtts" if self.config.tls else "mqtt"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    def _problem(self, problem: str) -> None:
        # The client retries every few seconds; one log line per new problem, not per retry.
        if problem != self._last_problem:
            self._last_problem = problem
            log.error("MQTT broker %s: %s; retrying", self.where, problem)

    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._problem(f"connection refused ({reason})")
            return
        self._last_problem = ""
        # "online" is queued before anyone is told we are connected.
        client.publish(self.config.availability_topic, "online", qos=1, retain=True)
        for topic in list(self._handlers):
            client.subscribe(topic, qos=1)
        self.connected.set()
        log.info("MQTT connected to %s; decisions on %s", self.where, self.config.topic)
        for hook in list(self.on_connected):
            try:
                hook()
            except Exception:  # a hook's fault must not take the network thread down
                log.exception("MQTT on-connect hook failed")

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: Any) -> None:
        handler = self._handlers.get(msg.topic)
        if handler is None:
            return
        try:
            handler(bytes(msg.payload), bool(msg.retain))
        except Exception:
            log.exception("MQTT message on %s could not be handled", msg.topic)

    def subscribe(self, topic: str, handler: Callable[[bytes, bool], None]) -> None:
        """Call `handler(payload, retained)` for each message on `topic` (on paho's thread), from now
        and after every reconnect."""
        self._handlers[topic] = handler
        if self.connected.is_set():
            self._client.subscribe(topic, qos=1)

    def send(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        """Publish anything else (Home Assistant's discovery and states); queued while the broker is away."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            log.error("MQTT queue full (%d); %s not published", MAX_QUEUED, topic)

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and reason.is_failure:
            self._problem(f"connection lost ({reason})")

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        # paho calls this from inside its `except OSError`, so the reason is still at hand.
        exc = sys.exc_info()[1]
        self._problem(f"cannot connect: {exc}" if exc else "cannot connect")

    def publish(self, record: dict[str, object], door: str) -> None:
        info = self._client.publish(decision_topic(self.config.topic, door), json.dumps(record), qos=self.config.qos)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            log.error("MQTT queue full (%d); decision at %s not published", MAX_QUEUED, record.get("ts"))

    def close(self) -> None:
        """Say "offline" (retained) and disconnect; the will covers the case where we cannot."""
        if self.connected.is_set():
            info = self._client.publish(self.config.availability_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=CLOSE_TIMEOUT_S)
            except (RuntimeError, ValueError):
                pass  # the link dropped meanwhile: the broker publishes the will instead
        self._client.disconnect()
        self._client.loop_stop()


def decision_topic(topic: str, door: str) -> str:
    """`mqtt.topic` for one door: `{door}` in it becomes the door's name (the record names it too)."""
    return topic.replace("{door}", door)


def open_mqtt(config: MqttConfig) -> MqttPublisher | None:
    return MqttPublisher(config) if config.host else None
