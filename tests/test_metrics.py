"""The Prometheus endpoint of a live daemon, scraped over HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

from accessd.config import load_config
from accessd.daemon import Daemon
from tests.conftest import free_port
from tests.test_daemon import PERSON, enrol, photos, write_config
from tests.test_source import MjpegCamera


def test_metrics_endpoint_reports_the_loop(tmp_path: Path, tiny_model: Path) -> None:
    camera = MjpegCamera(frames_per_connection=100_000, fps=20)
    port = free_port()
    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:3])
    cfg = write_config(tmp_path / "config.yaml", tiny_model, source={"uri": camera.url},
                       gallery={"dir": str(gallery)}, audit={"path": str(tmp_path / "a.jsonl")})
    config = load_config(cfg)
    config = type(config)(**{**config.__dict__, "metrics": type(config.metrics)("127.0.0.1", port)})
    daemon = Daemon(config)
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            if "accessd_frames_total" in text and 'stage="detect"' in text:
                frames = next(float(line.split()[1]) for line in text.splitlines()
                              if line.startswith('accessd_frames_total{door="door"} '))
                if frames >= 10:
                    break
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(timeout=10)
        camera.close()
    for name in ("accessd_frames_total", "accessd_frames_per_second", "accessd_stage_seconds_bucket",
                 "accessd_frame_errors_total", "accessd_camera_reconnects", "accessd_hook_failures",
                 "accessd_gallery_photos 3.0", "accessd_gallery_people 1.0",
                 'accessd_execution_provider_info{provider="CPUExecutionProvider"}'):
        assert name in text, name
    for stage in ("capture", "detect", "decide"):
        assert f'stage="{stage}"' in text
    assert not runner.is_alive()
