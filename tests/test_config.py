from __future__ import annotations

from pathlib import Path

import pytest

from accessd.config import ConfigError, load_config, parse_config, read_credential
from tests.conftest import REPO, run_py


def test_shipped_config_is_valid_and_matches_defaults() -> None:
    shipped = load_config(REPO / "config.yaml")
    defaults = parse_config({}, REPO)
    assert shipped == defaults


def test_defaults_err_on_the_side_of_deny() -> None:
    d = parse_config({}, Path("/srv")).decision
    assert d.detection_threshold is None  # the model's own, chosen per door attempt on held-out people
    assert 0 < d.verification_threshold < 1
    assert d.margin > 0 and d.score_margin > 0
    assert d.confirm_frames >= 2


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gallery:\n  dir: people\n")
    c = load_config(cfg)
    assert c.gallery.dir == tmp_path / "people"
    assert c.model.path == tmp_path / "models/accessd-resnet.onnx"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("nonsense_key: 1\n", "nonsense_key: unknown key"),
        ("decision:\n  verification_threshold: 1.5\n", "decision.verification_threshold: must be between 0 and 1 (got 1.5)"),
        ("decision:\n  detection_threshold: -0.1\n", "decision.detection_threshold: must be between 0 and 1"),
        ("decision:\n  score_margin: -1.0\n", "decision.score_margin: must not be negative (got -1.0)"),
        ("decision:\n  confirm_frames: three\n", "decision.confirm_frames: must be an integer (got 'three')"),
        ("decision:\n  confirm_frames: 4\n  confirm_window: 2\n", "decision.confirm_window: must be at least confirm_frames"),
        ("detector:\n  model: long_range\n", "detector.model: must be one of full_range, short_range"),
        ("actions:\n  hooks:\n    - argv: rm -rf /\n", "actions.hooks[0].argv: must be a list"),
        ("actions:\n  webhooks:\n    - url: ftp://x\n", "actions.webhooks[0].url: must be an http"),
        ("model: [1, 2]\n", "model: must be a mapping"),
        ("decision:\n  margin: true\n", "decision.margin: must be a number (got True)"),
        ("source:\n  uri: rtsp://cam/live\n  password_credential: cam-pw\n",
         "source.password_credential: needs a user in source.uri (rtsp://user@host/...; got 'rtsp://cam/live')"),
        ("mqtt:\n  port: 70000\n", "mqtt.port: must be a TCP port, 1-65535 (got 70000)"),
        ("mqtt:\n  topic: door/#\n", "mqtt.topic: must be a topic name without wildcards (got 'door/#')"),
        ("mqtt:\n  qos: true\n", "mqtt.qos: must be one of 0, 1, 2 (got True)"),
        ("mqtt:\n  password_credential: mqtt-pass\n", "mqtt.password_credential: needs mqtt.username"),
        ("mqtt:\n  ca_file: ca.pem\n", "mqtt.ca_file: needs mqtt.tls: true"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, yaml_text: str, expected: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("foo: 1\ndecision:\n  margin: 2\n  bar: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert len(err.value.problems) == 3


def test_not_yaml_and_empty(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("decision: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == parse_config({}, tmp_path)


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = run_py("-m", "accessd", "check-config", "--config", str(REPO / "config.yaml"))
    assert "ok" in ok.stdout
    bad = tmp_path / "c.yaml"
    bad.write_text("decision:\n  margin: 7\nextra: 1\n")
    result = run_py("-m", "accessd", "check-config", "--config", str(bad), check=False)
    assert result.returncode == 2
    assert "decision.margin" in result.stderr and "extra: unknown key" in result.stderr


def test_credentials_come_from_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_credential("token") == "s3cret"
    with pytest.raises(ConfigError, match="'missing'"):
        read_credential("missing")


def test_console_settings_are_checked_by_name() -> None:
    web = parse_config({}, Path("/srv")).web
    assert web.host == "127.0.0.1" and web.password_credential is None  # loopback, and off without a password
    with pytest.raises(ConfigError) as err:
        parse_config({"web": {"port": 70000, "max_upload_bytes": 0, "session_hours": -1, "pasword": "x"}},
                     Path("/srv"))
    problems = "\n".join(err.value.problems)
    for key in ("web.port", "web.max_upload_bytes", "web.session_hours", "web.pasword: unknown key"):
        assert key in problems, problems
