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
import os
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
class SourceConfig:
    # Camera index ("0"), video file path, or rtsp:// / http:// URL.
    uri: str = "0"
    width: int = 0  # requested capture size for cameras; 0 keeps the camera's default
    height: int = 0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    # A stream that sends nothing for this long is treated as dropped and reopened.
    stall_timeout_s: float = 10.0
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
    min_confidence: float = 0.6
    max_faces: int = 4  # the largest faces are verified; more in one frame are ignored
    min_face_px: int = 40  # smaller faces are too far away to verify reliably


@dataclass(frozen=True)
class ModelConfig:
    path: Path = Path("models/accessd-resnet.onnx")
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    threads: int = 0  # ONNX Runtime intra-op threads; 0 lets it pick


@dataclass(frozen=True)
class GalleryConfig:
    dir: Path = Path("verification_images")
    # Owner of photos placed directly in `dir` instead of a person's sub-folder.
    default_person: str = "owner"


@dataclass(frozen=True)
class DecisionConfig:
    # A (face, photo) pair matches when its score is above this; null takes the
    # threshold stored in the model file at export.
    detection_threshold: float | None = None
    # A person is verified when the fraction of their photos that match is above this:
    # 1 of 1, 2 of 3, 4 of 10 at 0.34. Chosen with the shipped model per door attempt on
    # held-out people (train/README.md): the most enrolled people let in with no
    # stranger in 2,400 attempts; 0.3 (1 of 3) let 5 in, 0.5 fewer of the enrolled.
    verification_threshold: float = 0.34
    # The best person's ratio must beat the runner-up's by this much (look-alikes are denied).
    margin: float = 0.2
    # ... and their quorum score (k-th best photo) everyone else's by this much, in
    # log-odds: with one photo per person the ratio is 0 or 1, and only this tells a look-alike.
    score_margin: float = 0.5
    # ... and the face must score above this against the person's template (the mean of
    # their photo embeddings); null: no template check. Chosen with the model's 0.6 per
    # door attempt on held-out people (train/README.md): 88 % of genuine attempts, no
    # stranger in 2,400; without it 0.6 let one in, and 0.65 alone granted 84 %.
    template_threshold: float | None = 0.65
    confirm_frames: int = 3  # K: frames that must agree ...
    confirm_window: int = 5  # ... among the last N frames with a face
    grant_cooldown_s: float = 5.0
    deny_interval_s: float = 10.0  # at most one deny event per interval
    # After this many denies within lockout_window_s, no one is granted for lockout_s
    # (someone trying faces or photos at the door); 0 disables the lockout.
    lockout_denies: int = 5
    lockout_window_s: float = 120.0
    lockout_s: float = 300.0
    # Presentation-attack check, off until proven on real camera footage: a grant
    # needs the face's landmarks to move relative to its box over the last
    # liveness_window_s. Stops a still photo held to the camera; not a photo moved
    # by hand, bent or tilted, nor a screen playing a video.
    liveness_check: bool = False
    liveness_window_s: float = 1.0
    # Range of box-relative keypoints over the window: a re-encoded still frame
    # jitters by up to 0.0074, the live webcam recording moves by 0.039 or more.
    liveness_min_motion: float = 0.02


@dataclass(frozen=True)
class HookConfig:
    argv: tuple[str, ...] = ()
    on: tuple[Literal["grant", "deny"], ...] = ("grant",)
    timeout_s: float = 5.0


@dataclass(frozen=True)
class WebhookConfig:
    url: str = ""
    on: tuple[Literal["grant", "deny"], ...] = ("grant", "deny")
    timeout_s: float = 3.0
    retries: int = 2
    # Name of a file in $CREDENTIALS_DIRECTORY holding a bearer token.
    token_credential: str | None = None


@dataclass(frozen=True)
class ActionsConfig:
    hooks: tuple[HookConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    max_concurrent: int = 4


@dataclass(frozen=True)
class AuditConfig:
    path: Path = Path("state/audit.jsonl")
    snapshots_dir: Path | None = None  # a JPEG of the face per decision when set
    max_bytes: int = 50_000_000  # rotate the log past this size ...
    keep: int = 5  # ... keeping this many old files (audit.jsonl.1 is the newest)


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"  # Prometheus endpoint; keep it on loopback unless a scraper needs it
    port: int = 9464  # 0 disables the endpoint


@dataclass(frozen=True)
class WebConfig:
    """The console: a local web page and JSON API served by the daemon (accessd/console.py)."""

    host: str = "127.0.0.1"  # loopback: reach it through an SSH tunnel or a reverse proxy
    port: int = 8080  # 0 disables the console
    # Name of a file in $CREDENTIALS_DIRECTORY holding the console password. Without
    # one the console does not start (the door keeps working): nothing is served unauthenticated.
    password_credential: str | None = None
    session_hours: float = 12.0  # a browser login lasts this long
    max_upload_bytes: int = 10_000_000  # larger uploads are refused with 413


@dataclass(frozen=True)
class MqttConfig:
    host: str = ""  # broker host name; empty disables MQTT
    port: int = 1883  # 8883 is the usual port with tls
    topic: str = "accessd/decision"  # each decision as JSON (its audit record)
    # Retained "online"/"offline"; "offline" is also the last will, sent by the broker if we die.
    availability_topic: str = "accessd/availability"
    qos: Literal[0, 1, 2] = 1
    client_id: str = ""  # empty: a random id
    username: str = ""
    # Name of a file in $CREDENTIALS_DIRECTORY holding the password (never in this file).
    password_credential: str | None = None
    tls: bool = False
    ca_file: Path | None = None  # CA bundle that signed the broker's certificate; null: the system's
    keepalive_s: int = 30


@dataclass(frozen=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    web: WebConfig = field(default_factory=WebConfig)
    state_dir: Path = Path("state")  # caches (gallery embeddings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# Keys whose values must lie in [0, 1].
_UNIT_INTERVAL = {
    "detector.min_confidence",
    "decision.detection_threshold",
    "decision.verification_threshold",
    "decision.template_threshold",
    "decision.margin",
}


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
        if key in _UNIT_INTERVAL and isinstance(value, float) and not 0.0 <= value <= 1.0:
            problems.append(f"{key}: must be between 0 and 1 (got {value!r})")
        if key == "decision.score_margin" and isinstance(value, float) and value < 0:
            problems.append(f"{key}: must not be negative (got {value!r})")
        kwargs[f.name] = value
    obj = cls(**kwargs)
    _check_ranges(obj, prefix, problems)
    return obj


def _check_ranges(obj: Any, prefix: str, problems: list[str]) -> None:
    def key(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    if isinstance(obj, DecisionConfig):
        if isinstance(obj.confirm_frames, int) and obj.confirm_frames < 1:
            problems.append(f"{key('confirm_frames')}: must be at least 1 (got {obj.confirm_frames!r})")
        if (
            isinstance(obj.confirm_frames, int)
            and isinstance(obj.confirm_window, int)
            and obj.confirm_window < obj.confirm_frames
        ):
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
    if isinstance(obj, WebConfig):
        if isinstance(obj.port, int) and not 0 <= obj.port < 65536:
            problems.append(f"{key('port')}: must be a TCP port, 0-65535 (got {obj.port!r})")
        if isinstance(obj.max_upload_bytes, int) and obj.max_upload_bytes < 1:
            problems.append(f"{key('max_upload_bytes')}: must be at least 1 (got {obj.max_upload_bytes!r})")
        if isinstance(obj.session_hours, float) and obj.session_hours <= 0:
            problems.append(f"{key('session_hours')}: must be positive (got {obj.session_hours!r})")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if (
            f.name.endswith(("_s", "timeout_s"))
            and isinstance(value, float)
            and value < 0
        ):
            problems.append(f"{key(f.name)}: must not be negative (got {value!r})")


def _check_mqtt(obj: MqttConfig, key: Callable[[str], str], problems: list[str]) -> None:
    if isinstance(obj.port, int) and not 0 < obj.port < 65536:
        problems.append(f"{key('port')}: must be a TCP port, 1-65535 (got {obj.port!r})")
    for name in ("topic", "availability_topic"):
        topic = getattr(obj, name)
        if isinstance(topic, str) and (not topic or "#" in topic or "+" in topic):
            problems.append(f"{key(name)}: must be a topic name without wildcards (got {topic!r})")
    if obj.password_credential and not obj.username:
        problems.append(f"{key('password_credential')}: needs {key('username')}")
    if obj.ca_file is not None and not obj.tls:
        problems.append(f"{key('ca_file')}: needs {key('tls')}: true")
    if isinstance(obj.keepalive_s, int) and obj.keepalive_s < 5:
        problems.append(f"{key('keepalive_s')}: must be at least 5 (got {obj.keepalive_s!r})")


def parse_config(data: Any, base: Path, source: str = "config") -> Config:
    problems: list[str] = []
    config = _build(Config, data, "", problems, base)
    if problems:
        raise ConfigError(problems, source)
    return typing.cast(Config, config)


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
        data = yaml.safe_load(text)
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
