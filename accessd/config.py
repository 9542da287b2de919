"""The one place config keys, types and defaults live.

`load_config` turns `config.yaml` into frozen dataclasses. Every problem is
collected (not just the first) and names its dotted key and the bad value, so
`accessd check-config` can list them all. Relative paths are resolved against
the config file's folder, so the service behaves the same from any cwd.
Secrets never come from YAML: they are read from files in
`$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), named by the config.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """Invalid configuration; `problems` lists one message per bad key."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts; `_build` names the key and value outside it."""

    lo: float | None = None
    hi: float | None = None
    above: bool = False  # lo itself is refused (a timeout of 0 s, a window of 0 s)
    or_zero: bool = False  # 0 is accepted too, meaning "off"
    what: str = ""  # the message, where a plain range says less ("a TCP port, 1-65535")

    def problem(self, value: float) -> str | None:
        if self.or_zero and value == 0:
            return None
        low = self.lo is not None and (value <= self.lo if self.above else value < self.lo)
        if not low and (self.hi is None or value <= self.hi):
            return None
        if self.what:
            return f"must be {self.what}"
        if self.or_zero:
            return f"must be 0 (off) or at least {_num(self.lo or 0)}"
        if self.lo is not None and self.hi is not None:
            return f"must be between {_num(self.lo)} and {_num(self.hi)}"
        lo = self.lo if self.lo is not None else 0.0
        if self.above:
            return "must be positive" if lo == 0 else f"must be above {_num(lo)}"
        return "must not be negative" if lo == 0 else f"must be at least {_num(lo)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _in(default: Any, lo: float | None = None, hi: float | None = None, *, above: bool = False,
        or_zero: bool = False, what: str = "") -> Any:
    """A numeric field with its default and accepted range (every numeric key has one; a test checks)."""
    return field(default=default, metadata={"range": Range(lo, hi, above, or_zero, what)})


_PORT = "a TCP port, 0-65535 (0 disables it)"


@dataclass(frozen=True)
class SourceConfig:
    # Camera index ("0"), video file path, or rtsp:// / http:// URL.
    uri: str = "0"
    width: int = _in(0, 0, 16384)  # requested capture size for cameras; 0 keeps the camera's default
    height: int = _in(0, 0, 16384)
    reconnect_initial_s: float = _in(0.5, 0.0, above=True)
    reconnect_max_s: float = _in(30.0, 0.0, above=True)
    # A stream that sends nothing for this long is treated as dropped and reopened.
    stall_timeout_s: float = _in(10.0, 0.0, above=True)
    # Name of a file in $CREDENTIALS_DIRECTORY holding the stream's password, for a uri
    # with a user and no password (rtsp://admin@camera/stream). Logs, the audit log and
    # hooks show the uri without a password either way.
    password_credential: str | None = None


@dataclass(frozen=True)
class DetectorConfig:
    # full_range finds faces of ~95 px in a 1280x720 frame (a person 1-2 m from a
    # door camera); short_range misses most of them and suits selfie distance.
    model: Literal["full_range", "short_range"] = "full_range"
    models_dir: Path = Path("models/detector")
    min_confidence: float = _in(0.6, 0.0, 1.0)
    max_faces: int = _in(4, 1, 64)  # the largest faces are verified; more in one frame are ignored
    min_face_px: int = _in(40, 1)  # smaller faces are too far away to verify reliably


@dataclass(frozen=True)
class ModelConfig:
    path: Path = Path("models/accessd-fused.onnx")
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    threads: int = _in(0, 0, 256)  # ONNX Runtime intra-op threads; 0 lets it pick


@dataclass(frozen=True)
class GalleryConfig:
    dir: Path = Path("verification_images")
    # Owner of photos placed directly in `dir` instead of a person's sub-folder.
    default_person: str = "owner"


@dataclass(frozen=True)
class DecisionConfig:
    # A (face, photo) pair matches when its score is above this; null takes the
    # threshold stored in the model file at export.
    detection_threshold: float | None = _in(None, 0.0, 1.0)
    # A person is verified when the fraction of their photos that match is above this:
    # 1 of 1, 2 of 3, 4 of 10 at 0.34. Chosen with the shipped model per door attempt on
    # held-out people (train/README.md): the most enrolled people let in with no
    # stranger in 2,400 attempts; 0.3 (1 of 3) let 5 in, 0.5 fewer of the enrolled.
    verification_threshold: float = _in(0.34, 0.0, 1.0)
    # The best person's ratio must beat the runner-up's by this much (look-alikes are denied).
    margin: float = _in(0.2, 0.0, 1.0)
    # ... and their quorum score (k-th best photo) everyone else's by this much, in
    # log-odds: with one photo per person the ratio is 0 or 1, and only this tells a look-alike.
    score_margin: float = _in(0.5, 0.0)
    # ... and the face must score above this against the person's template (the mean of
    # their photo embeddings); null: no template check. Chosen with the model's 0.6 per
    # door attempt on held-out people (train/README.md): 88 % of genuine attempts, no
    # stranger in 2,400; without it 0.6 let one in, and 0.65 alone granted 84 %.
    template_threshold: float | None = _in(0.65, 0.0, 1.0)
    # ... and the person's score must stand out from what the face scores against the model's
    # cohort of strangers (accessd/decide.py, cohort_z): this many spreads above its mean;
    # null: the model's (chosen per attempt on held-out people). Off for a model without a cohort.
    cohort_check: bool = True
    cohort_threshold: float | None = _in(None, 0.0, 20.0)
    confirm_frames: int = _in(3, 1, 100)  # K: frames that must agree ...
    confirm_window: int = _in(5, 1, 100)  # ... among the last N frames with a face ...
    # ... all seen within this long: after a camera stall or a gap in the frames, nothing
    # seen before it votes (a grant on the first frame after a stall once let in an empty corridor).
    confirm_max_age_s: float = _in(2.0, 0.0, 60.0, above=True)
    grant_cooldown_s: float = _in(5.0, 0.0)
    deny_interval_s: float = _in(10.0, 0.0)  # at most one deny event per interval
    # After this many denies within lockout_window_s, no one is granted for lockout_s
    # (someone trying faces or photos at the door); 0 disables the lockout.
    lockout_denies: int = _in(5, 0)
    lockout_window_s: float = _in(120.0, 0.0, above=True)
    lockout_s: float = _in(300.0, 0.0)


@dataclass(frozen=True)
class LivenessConfig:
    """Presentation-attack checks (accessd/liveness.py, accessd/instrument.py). Each refusal is a
    `spoof_suspected` decision naming its check. Measured per attack in train/spoof_eval.py."""

    # Blink: a grant waits for an eye blink (open, closed, open within 60-500 ms, seen by
    # MediaPipe's face mesh) for at most max_wait_s, then the attempt is refused as "no blink".
    blink: bool = True
    max_wait_s: float = _in(6.0, 0.5, 60.0)
    # Instrument: a straight-edged frame close around the face on all four sides (a paper's
    # edge, a phone's bezel) in at least instrument_frames frames of the attempt.
    instrument: bool = True
    instrument_frames: int = _in(2, 1, 100)
    # Motion: the face's keypoints must move relative to its box over motion_window_s (a
    # re-encoded still frame jitters by up to 0.0074, the live webcam recording by 0.039 or more).
    motion: bool = True
    motion_window_s: float = _in(1.0, 0.0, 60.0, above=True)
    motion_min: float = _in(0.02, 0.0, 1.0)
    # The 468-point face mesh in ONNX, converted from MediaPipe's wheel (export/face_mesh_to_onnx.py).
    mesh_model: Path = Path("models/face_mesh.onnx")


@dataclass(frozen=True)
class HookConfig:
    argv: tuple[str, ...] = ()
    on: tuple[Literal["grant", "deny", "spoof_suspected"], ...] = ("grant",)
    timeout_s: float = _in(5.0, 0.0, 3600.0, above=True)


@dataclass(frozen=True)
class WebhookConfig:
    url: str = ""
    on: tuple[Literal["grant", "deny", "spoof_suspected"], ...] = ("grant", "deny", "spoof_suspected")
    timeout_s: float = _in(3.0, 0.0, 600.0, above=True)
    retries: int = _in(2, 0, 10)
    # Name of a file in $CREDENTIALS_DIRECTORY holding a bearer token.
    token_credential: str | None = None


@dataclass(frozen=True)
class ActionsConfig:
    hooks: tuple[HookConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    max_concurrent: int = _in(4, 1, 64)


@dataclass(frozen=True)
class AuditConfig:
    path: Path = Path("state/audit.jsonl")
    snapshots_dir: Path | None = None  # a JPEG of the face per decision when set
    # Rotate the log past this size (0: never). Not below 10 kB: a size under one record
    # (or negative) rotated on every record, and `keep` old files were then all the history.
    max_bytes: int = _in(50_000_000, 10_000, or_zero=True)
    keep: int = _in(5, 1, 1000)  # ... keeping this many old files (audit.jsonl.1 is the newest)


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"  # Prometheus endpoint; keep it on loopback unless a scraper needs it
    port: int = _in(9464, 0, 65535, what=_PORT)  # 0 disables the endpoint


@dataclass(frozen=True)
class WebConfig:
    """The console: a local web page and JSON API served by the daemon (accessd/console.py)."""

    host: str = "127.0.0.1"  # loopback: reach it through an SSH tunnel or a reverse proxy
    port: int = _in(8080, 0, 65535, what=_PORT)  # 0 disables the console
    # Name of a file in $CREDENTIALS_DIRECTORY holding the console password. Without
    # one the console does not start (the door keeps working): nothing is served unauthenticated.
    password_credential: str | None = None
    # Name of a file in $CREDENTIALS_DIRECTORY holding the API token for scripts
    # (`Authorization: Bearer <token>`), 32 characters or more: long and random, unlike a
    # password a person types. Without one the API takes the browser's login cookie only.
    api_token_credential: str | None = None
    # The address of a reverse proxy (TLS in front of the console) whose X-Forwarded-For,
    # -Proto and -Host are believed: the client's address for the login limit and the
    # audit log, and https:// for the Origin check. Anyone else's are ignored.
    trusted_proxy: str | None = None
    session_hours: float = _in(12.0, 0.0, 24.0 * 365, above=True)  # a browser login lasts this long
    max_upload_bytes: int = _in(10_000_000, 1, 100_000_000)  # larger uploads are refused with 413


@dataclass(frozen=True)
class MqttConfig:
    host: str = ""  # broker host name; empty disables MQTT
    port: int = _in(1883, 1, 65535, what="a TCP port, 1-65535")  # 8883 is the usual port with tls
    # Each decision as JSON (its audit record, which names the door); {door} becomes the door's name.
    topic: str = "accessd/{door}/decision"
    # Retained "online"/"offline"; "offline" is also the last will, sent by the broker if we die.
    availability_topic: str = "accessd/availability"
    qos: Literal[0, 1, 2] = 1
    client_id: str = ""  # empty: a random id
    username: str = ""
    # Name of a file in $CREDENTIALS_DIRECTORY holding the password (never in this file).
    password_credential: str | None = None
    tls: bool = False
    ca_file: Path | None = None  # CA bundle that signed the broker's certificate; null: the system's
    keepalive_s: int = _in(30, 5, 3600)
    # Home Assistant MQTT discovery: each door announces itself as a device with its entities
    # (accessd/hass.py). Their states and commands live under door_topic ({door}: the door's name).
    discovery: bool = False
    discovery_prefix: str = "homeassistant"
    door_topic: str = "accessd/{door}"


@dataclass(frozen=True)
class HolidayConfig:
    date: str = ""  # YYYY-MM-DD, in the door's time zone
    # The door's hours that day ("09:00-12:00"); empty: closed to faces all day.
    hours: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class PolicyConfig:
    """Who may enter when, for everyone at a door (accessd/rules.py); people's own rules are in
    verification_images/<person>/person.yaml. Windows are '<days> HH:MM-HH:MM' in `timezone`."""

    timezone: str = ""  # an IANA name (Europe/Berlin); empty: this machine's zone
    hours: tuple[str, ...] = ("daily 00:00-24:00",)  # when a face may open the door; [] never
    holidays: tuple[HolidayConfig, ...] = ()  # dated exceptions to `hours`
    # When every face needs a code as well (a PIN or card from a keypad, accessd/secondfactor.py),
    # e.g. [daily 22:00-24:00, daily 00:00-06:00]; [] only people whose rules ask for one.
    second_factor_hours: tuple[str, ...] = ()
    second_factor_window_s: float = _in(30.0, 1.0, 600.0)  # the code within this long of the face
    code_attempts: int = _in(3, 1, 20)  # wrong codes within code_lockout_s before codes are refused ...
    code_lockout_s: float = _in(300.0, 1.0, 86400.0)  # ... for this long


DEFAULT_DOOR = "door"  # the name of the one door of a config without `doors:`
DOOR_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # goes into MQTT topics, metric labels, Home Assistant ids
# The `decision` keys a door may set for itself: its own state (confirmation, cooldown, lockout).
# The thresholds are the daemon's: one model and one gallery judge the faces of every door.
DOOR_DECISION_KEYS = ("confirm_frames", "confirm_window", "confirm_max_age_s", "grant_cooldown_s",
                      "deny_interval_s", "lockout_denies", "lockout_window_s", "lockout_s")


@dataclass(frozen=True)
class DoorConfig:
    """One door: its camera, what it does on a decision, and its own decision state.

    `decision` is the top-level `decision` with the door's own keys (DOOR_DECISION_KEYS) over it;
    `actions` is the door's own, or the top-level `actions` when the door names none.
    """

    name: str = DEFAULT_DOOR
    source: SourceConfig = field(default_factory=SourceConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)


@dataclass(frozen=True)
class Config:
    # Several cameras: a list of doors around one model and gallery. Without it, `source`,
    # `actions` and `decision` below are the one door's, named "door" (see `door_list`).
    doors: tuple[DoorConfig, ...] = ()
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # each door's, unless the door sets its own keys
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    web: WebConfig = field(default_factory=WebConfig)
    state_dir: Path = Path("state")  # caches (gallery embeddings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def door_list(self) -> tuple[DoorConfig, ...]:
        """The doors to run: `doors`, or the one door of a config without it."""
        return self.doors or (DoorConfig(DEFAULT_DOOR, self.source, self.actions, self.decision, self.policy),)


def _convert(tp: Any, value: Any, key: str, problems: list[str], base: Path) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, problems, base)
    if origin is Literal:
        if value not in args or (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            problems.append(f"{key}: must be one of {', '.join(map(str, args))} (got {value!r})")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            problems.append(f"{key}: must be a list (got {value!r})")
            return ()
        return tuple(_convert(args[0], v, f"{key}[{i}]", problems, base) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems, base)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: must be true or false (got {value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: must be an integer (got {value!r})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{key}: must be a number (got {value!r})")
            return value
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            problems.append(f"{key}: must be a string (got {value!r})")
            return value
        return str(value)
    if tp is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"{key}: must be a path (got {value!r})")
            return Path(".")
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else base / path
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls: Any, data: Any, prefix: str, problems: list[str], base: Path) -> Any:
    where = prefix or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where}: must be a mapping (got {data!r})")
        data = {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted(set(data) - names, key=str):
        problems.append(f"{prefix + '.' if prefix else ''}{unknown}: unknown key")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            value = _convert(hints[f.name], data[f.name], key, problems, base)
        elif dataclasses.is_dataclass(hints[f.name]):
            value = _build(hints[f.name], {}, key, problems, base)
        else:
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if isinstance(value, Path) and not value.is_absolute():
                value = base / value
        rng = f.metadata.get("range")
        if rng is not None and _numbers(value):
            problem = rng.problem(value)
            if problem is not None:
                problems.append(f"{key}: {problem} (got {value!r})")
        kwargs[f.name] = value
    obj = cls(**kwargs)
    _check_ranges(obj, prefix, problems)
    return obj


def _check_ranges(obj: Any, prefix: str, problems: list[str]) -> None:
    def key(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    if isinstance(obj, DecisionConfig) and _numbers(obj.confirm_frames, obj.confirm_window):
        if obj.confirm_window < obj.confirm_frames:
            problems.append(
                f"{key('confirm_window')}: must be at least confirm_frames (got {obj.confirm_window!r})"
            )
    if isinstance(obj, HookConfig) and not obj.argv:
        problems.append(f"{key('argv')}: must name a command (got {list(obj.argv)!r})")
    if isinstance(obj, WebhookConfig) and not str(obj.url).startswith(("http://", "https://")):
        problems.append(f"{key('url')}: must be an http:// or https:// URL (got {obj.url!r})")
    if isinstance(obj, SourceConfig) and obj.password_credential and isinstance(obj.uri, str):
        if "@" not in obj.uri.partition("://")[2].partition("/")[0]:
            problems.append(f"{key('password_credential')}: needs a user in {key('uri')} "
                            f"(rtsp://user@host/...; got {obj.uri!r})")
    if isinstance(obj, MqttConfig):
        _check_mqtt(obj, key, problems)
    if isinstance(obj, PolicyConfig):
        _check_policy(obj, key, problems)
    if isinstance(obj, WebConfig) and obj.trusted_proxy is not None:
        try:
            ipaddress.ip_address(str(obj.trusted_proxy))
        except ValueError:
            problems.append(f"{key('trusted_proxy')}: must be an IP address (got {obj.trusted_proxy!r})")
    if isinstance(obj, SourceConfig) and _numbers(obj.reconnect_initial_s, obj.reconnect_max_s):
        if obj.reconnect_max_s < obj.reconnect_initial_s:
            problems.append(f"{key('reconnect_max_s')}: must be at least reconnect_initial_s "
                            f"(got {obj.reconnect_max_s!r})")


def _numbers(*values: object) -> bool:
    """True when every value is a number: a wrong type was already reported, don't compare it."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _check_mqtt(obj: MqttConfig, key: Callable[[str], str], problems: list[str]) -> None:
    for name in ("topic", "availability_topic", "discovery_prefix", "door_topic"):
        topic = getattr(obj, name)
        if isinstance(topic, str) and (not topic or "#" in topic or "+" in topic):
            problems.append(f"{key(name)}: must be a topic name without wildcards (got {topic!r})")
        elif isinstance(topic, str) and ("{" in topic.replace("{door}", "") or "}" in topic.replace("{door}", "")):
            problems.append(f"{key(name)}: the only placeholder is {{door}} (got {topic!r})")
    if obj.discovery and isinstance(obj.door_topic, str) and "{door}" not in obj.door_topic:
        problems.append(f"{key('door_topic')}: must hold {{door}}, each door's entities need their own topics "
                        f"(got {obj.door_topic!r})")
    if obj.password_credential and not obj.username:
        problems.append(f"{key('password_credential')}: needs {key('username')}")
    if obj.ca_file is not None and not obj.tls:
        problems.append(f"{key('ca_file')}: needs {key('tls')}: true")


def _check_policy(obj: PolicyConfig, key: Callable[[str], str], problems: list[str]) -> None:
    from accessd.rules import RulesError, parse_zone, policy_from_config

    if isinstance(obj.timezone, str):
        try:
            parse_zone(obj.timezone, key("timezone"))
        except RulesError as exc:
            problems.append(str(exc))
            obj = dataclasses.replace(obj, timezone="UTC")  # and the other keys are still checked
    # One part at a time, each with the others left empty, so every bad part is named.
    for part in (dataclasses.replace(obj, holidays=(), second_factor_hours=()),
                 dataclasses.replace(obj, hours=(), second_factor_hours=()),
                 dataclasses.replace(obj, hours=(), holidays=())):
        try:
            policy_from_config(part, key(""))
        except RulesError as exc:
            problems.append(str(exc))
        except (TypeError, AttributeError):
            pass  # a wrong type, already named by _convert


def _door_data(data: Any, problems: list[str]) -> Any:
    """`data` with each door's `decision` laid over the top-level one and `actions` inherited."""
    if not isinstance(data, dict) or "doors" not in data:
        return data
    doors = data["doors"]
    if not isinstance(doors, list) or not doors:
        problems.append(f"doors: must be a list of doors, each with a name and a source (got {doors!r})")
        return {**data, "doors": []}
    if "source" in data:
        problems.append("source: with doors, each door names its own camera (doors[N].source)")
    top = data.get("decision")
    top_decision: dict[str, Any] = top if isinstance(top, dict) else {}
    merged = []
    for i, door in enumerate(doors):
        if not isinstance(door, dict):
            merged.append(door)  # _build names the problem
            continue
        own = door.get("decision")
        if isinstance(own, dict):
            for key in sorted(set(own) - set(DOOR_DECISION_KEYS), key=str):
                if key in {f.name for f in dataclasses.fields(DecisionConfig)}:
                    problems.append(f"doors[{i}].decision.{key}: not per door; one model and gallery judge "
                                    f"every door (set decision.{key})")
            own = {k: v for k, v in own.items() if k in DOOR_DECISION_KEYS or k not in top_decision}
            door = {**door, "decision": {**top_decision, **own}}
        elif own is None:
            door = {**door, "decision": top_decision}
        top_policy = data.get("policy")
        if isinstance(top_policy, dict):
            own_policy = door.get("policy")
            door = {**door, "policy": {**top_policy, **own_policy} if isinstance(own_policy, dict) else
                    own_policy if own_policy is not None else top_policy}
        if "actions" not in door and "actions" in data:
            door = {**door, "actions": data["actions"]}
        merged.append(door)
    return {**data, "doors": merged}


def _check_doors(config: Config, problems: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, door in enumerate(config.doors):
        if not isinstance(door.name, str) or not DOOR_NAME.fullmatch(door.name):
            problems.append(f"doors[{i}].name: must be 1-32 lower-case letters, digits, - or _, starting with a "
                            f"letter or digit (got {door.name!r})")
        elif door.name in seen:
            problems.append(f"doors[{i}].name: {door.name!r} is already the name of doors[{seen[door.name]}]")
        else:
            seen[door.name] = i


def parse_config(data: Any, base: Path, source: str = "config") -> Config:
    problems: list[str] = []
    data = _door_data(data, problems)
    config = _build(Config, data, "", problems, base)
    _check_doors(config, problems)
    if problems:
        raise ConfigError(problems, source)
    return typing.cast(Config, config)


class YamlLoader(yaml.SafeLoader):
    """YAML as people write config: only true/false are booleans (YAML 1.2). YAML 1.1 also reads
    on/off/yes/no as booleans, which turned a hook's `on: [grant]` into the key True. Dates stay
    text (`2026-12-24`): the reader of each key parses its own, and names the key when it cannot."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_config(path: Path | None) -> Config:
    """Load and validate `path`; None gives the defaults relative to the cwd."""
    if path is None:
        return parse_config({}, Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path} is not UTF-8 text"], str(path)) from exc
    try:
        data = yaml.load(text, Loader=YamlLoader)  # noqa: S506  # a SafeLoader, with YAML 1.2's booleans
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}".replace("\n", " ")], str(path)) from exc
    if data is None:
        data = {}
    return parse_config(data, path.resolve().parent, str(path))


def read_credential(name: str) -> str:
    """A secret from `$CREDENTIALS_DIRECTORY/<name>` (systemd LoadCredential=)."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError([f"credential {name!r} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"])
    path = Path(directory) / name
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"credential {name!r}: cannot read {path}: {exc.strerror or exc}"]) from exc
