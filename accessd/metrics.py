"""Prometheus metrics, served on 127.0.0.1 by default (prometheus-client).

One registry per daemon (not the library's global one), so tests and reloads
never see another instance's counters.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)

STAGES = ("capture", "detect", "embed", "decide")
_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("accessd_frames", "Frames processed", ["door"], registry=r)
        self.fps = Gauge("accessd_frames_per_second", "Frames processed per second", ["door"], registry=r)
        self.stage_seconds = Histogram("accessd_stage_seconds", "Per-frame latency by stage", ["stage"],
                                       buckets=_BUCKETS, registry=r)
        self.decisions = Counter("accessd_decisions", "Decisions by door, outcome and person",
                                 ["door", "decision", "person"],
                                 registry=r)
        self.spoof_suspected = Counter("accessd_spoof_suspected", "Faces refused as presented (photo, screen), "
                                       "by the liveness check that fired", ["door", "check"], registry=r)
        self.refusals = Counter("accessd_refusals", "Verified faces refused by an access rule, by door and rule "
                                "(outside_schedule, pass_expired, second_factor_wrong, ...)", ["door", "refusal"],
                                registry=r)
        self.frame_errors = Counter("accessd_frame_errors", "Frames that failed (no decision)", ["door"], registry=r)
        self.audit_errors = Counter("accessd_audit_errors", "Decisions that could not be recorded", registry=r)
        self.camera_reconnects = Gauge("accessd_camera_reconnects", "Camera reconnections since start", ["door"],
                                       registry=r)
        self.hook_failures = Gauge("accessd_hook_failures", "Hooks and webhooks that failed", ["door"], registry=r)
        self.gallery_photos = Gauge("accessd_gallery_photos", "Enrolled photos in use", registry=r)
        self.gallery_people = Gauge("accessd_gallery_people", "Enrolled people", registry=r)
        self.mqtt_connected = Gauge("accessd_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.provider = Info("accessd_execution_provider", "ONNX Runtime execution provider in use", registry=r)
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
