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
    assert c.model.path == tmp_path / "models/accessd-fused.onnx"


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
        # Each of these printed "ok" once; the first three erased the audit log or crashed `run`.
        ("audit:\n  max_bytes: -1\n", "audit.max_bytes: must be 0 (off) or at least 10000 (got -1)"),
        ("audit:\n  keep: 0\n", "audit.keep: must be between 1 and 1000 (got 0)"),
        ("audit:\n  keep: -1\n", "audit.keep: must be between 1 and 1000 (got -1)"),
        ("actions:\n  max_concurrent: 0\n", "actions.max_concurrent: must be between 1 and 64 (got 0)"),
        ("detector:\n  max_faces: 0\n", "detector.max_faces: must be between 1 and 64 (got 0)"),
        ("detector:\n  min_face_px: -5\n", "detector.min_face_px: must be at least 1 (got -5)"),
        ("metrics:\n  port: 70000\n", "metrics.port: must be a TCP port, 0-65535 (0 disables it) (got 70000)"),
        ("model:\n  threads: -3\n", "model.threads: must be between 0 and 256 (got -3)"),
        ("decision:\n  lockout_denies: -1\n", "decision.lockout_denies: must not be negative (got -1)"),
        ("decision:\n  confirm_max_age_s: 0\n", "decision.confirm_max_age_s: must be between 0 and 60"),
        ("source:\n  stall_timeout_s: 0\n", "source.stall_timeout_s: must be positive (got 0.0)"),
        ("source:\n  reconnect_initial_s: 5\n  reconnect_max_s: 1\n",
         "source.reconnect_max_s: must be at least reconnect_initial_s (got 1.0)"),
        ("actions:\n  hooks:\n    - argv: [x]\n      timeout_s: 0\n", "actions.hooks[0].timeout_s: must be between"),
        ("mqtt:\n  topic: accessd/{name}/decision\n", "mqtt.topic: the only placeholder is {door}"),
        ("doors: []\n", "doors: must be a list of doors"),
        ("doors:\n  - {name: Front Door}\n", "doors[0].name: must be 1-32 lower-case letters"),
        ("doors:\n  - {name: a}\n  - {name: a}\n", "doors[1].name: 'a' is already the name of doors[0]"),
        ("source: {uri: '1'}\ndoors:\n  - {name: a}\n", "source: with doors, each door names its own camera"),
        ("doors:\n  - name: a\n    decision: {detection_threshold: 0.9}\n",
         "doors[0].decision.detection_threshold: not per door"),
        ("doors:\n  - name: a\n    decision: {confirm_frames: 0}\n", "doors[0].decision.confirm_frames: must be between"),
        ("doors:\n  - name: a\n    source: {uri: '0', colour: red}\n", "doors[0].source.colour: unknown key"),
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


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, dataclass field) for every int or float key under `cls`, lists' items included."""
    import dataclasses
    import typing

    out: list[tuple[str, object]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(inner[0]):
            out += _numeric_fields(inner[0], f"{key}[].")
        elif dataclasses.is_dataclass(tp):
            out += _numeric_fields(tp, f"{key}.")  # type: ignore[arg-type]
        elif tp in (int, float) or (inner and inner[0] in (int, float) and typing.get_origin(tp) is not tuple):
            out.append((key, f))
    return out


def test_every_numeric_key_has_a_range_and_its_default_lies_in_it() -> None:
    from accessd.config import Config, Range

    fields = _numeric_fields(Config)
    assert len(fields) > 30, [k for k, _ in fields]  # the walk found the tree, not an empty list
    missing = [k for k, f in fields if not isinstance(f.metadata.get("range"), Range)]  # type: ignore[attr-defined]
    assert missing == [], f"numeric keys without a range: {missing}"
    for key, f in fields:
        default = f.default  # type: ignore[attr-defined]
        if default is not None:
            assert f.metadata["range"].problem(default) is None, key  # type: ignore[attr-defined]


def test_a_range_names_its_key_for_values_inside_lists() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"actions": {"webhooks": [{"url": "http://x/", "retries": 99}]}}, Path("/srv"))
    assert err.value.problems == ["actions.webhooks[0].retries: must be between 0 and 10 (got 99)"]


def test_doors_share_the_top_level_and_override_their_own_state(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
decision: {confirm_frames: 2, lockout_s: 60, detection_threshold: 0.7}
actions:
  hooks:
    - argv: [/usr/local/bin/notify]
      on: [grant, deny]
doors:
  - name: front
    source: {uri: /dev/video0}
    decision: {lockout_s: 600}
  - name: garage
    source: {uri: videos/garage.mp4}
    actions:
      hooks: [{argv: [/usr/local/bin/open-garage]}]
""")
    c = load_config(cfg)
    front, garage = c.door_list()
    assert (front.name, front.source.uri, garage.source.uri) == ("front", "/dev/video0", "videos/garage.mp4")
    # Its own state over the top-level decision; the rest (thresholds included) is the top level's.
    assert (front.decision.lockout_s, front.decision.confirm_frames) == (600.0, 2)
    assert (garage.decision.lockout_s, garage.decision.detection_threshold) == (60.0, 0.7)
    # Actions: the door's own, else the top level's (`on:` is a key here, not YAML 1.1's boolean).
    assert front.actions.hooks[0].argv == ("/usr/local/bin/notify",) and front.actions.hooks[0].on == ("grant", "deny")
    assert [h.argv for h in garage.actions.hooks] == [("/usr/local/bin/open-garage",)]


def test_a_config_without_doors_is_one_door_named_door(tmp_path: Path) -> None:
    c = parse_config({"source": {"uri": "2"}, "decision": {"confirm_frames": 4}}, tmp_path)
    (door,) = c.door_list()
    assert (door.name, door.source.uri, door.decision.confirm_frames) == ("door", "2", 4)
    result = run_py("-m", "accessd", "check-config", "--config", str(REPO / "config.yaml"))
    assert "1 door" in result.stdout and "doors:" in result.stdout  # says how to list several


def test_yaml_on_off_yes_no_are_strings_not_booleans(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("actions:\n  hooks:\n    - argv: [/bin/true]\n      on: [deny]\nliveness:\n  blink: false\n")
    c = load_config(cfg)
    assert c.actions.hooks[0].on == ("deny",) and c.liveness.blink is False
    cfg.write_text("liveness:\n  blink: off\n")  # YAML 1.1's false; here a string, and said so
    with pytest.raises(ConfigError, match="liveness.blink: must be true or false"):
        load_config(cfg)
