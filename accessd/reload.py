"""SIGHUP reloads: build the new configuration's parts beside the running ones.

`rebuild` runs on the worker thread while the frame loop keeps serving with
the current parts; the loop then swaps them in and `retire`s what is no longer
used. Parts the new configuration leaves unchanged are reused: the same model
and detector keep their pipeline (and the embedding cache still hits), the
same audit settings keep the open log, the same broker keeps its connection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from accessd.actions import Actions
from accessd.audit import AuditLog
from accessd.config import Config
from accessd.gallery import Gallery
from accessd.mqtt import MqttPublisher, open_mqtt
from accessd.pipeline import Pipeline


@dataclass
class Parts:
    config: Config
    pipeline: Pipeline
    gallery: Gallery
    audit: AuditLog
    actions: dict[str, Actions]  # by door
    mqtt: MqttPublisher | None


def door_actions(config: Config) -> dict[str, Actions]:
    """Each door's own actions (its own pool: a hung hook at one door never holds up another's)."""
    made: dict[str, Actions] = {}
    try:
        for door in config.door_list():
            made[door.name] = Actions(door.actions)
    except BaseException:
        for actions in made.values():
            actions.close(wait=False)
        raise
    return made


def _pipeline_changed(old: Config, new: Config) -> bool:
    return ((old.model, old.detector, old.state_dir, old.liveness)
            != (new.model, new.detector, new.state_dir, new.liveness))


def rebuild(current: Parts, config: Config, cancel: threading.Event | None = None) -> Parts:
    """Parts for `config`; on any error, closes what it made and raises (current parts untouched)."""
    made = Parts(config, current.pipeline, current.gallery, current.audit, current.actions, current.mqtt)
    try:
        if _pipeline_changed(current.config, config):
            made.pipeline = Pipeline(config)
        made.pipeline.thresholds_for(config)  # a decision the model cannot apply is refused here, not mid-swap
        made.gallery = made.pipeline.load_gallery(cancel=cancel)
        if config.audit != current.config.audit:
            made.audit = AuditLog.from_config(config.audit)
        made.actions = door_actions(config)
        if config.mqtt != current.config.mqtt:
            made.mqtt = open_mqtt(config.mqtt)
    except BaseException:
        retire(made, current)
        raise
    return made


def retire(old: Parts, new: Parts) -> None:
    """Close the parts of `old` that `new` does not use."""
    if old.pipeline is not new.pipeline:
        old.pipeline.close()
    if old.audit is not new.audit:
        old.audit.close()
    for actions in old.actions.values():
        if all(actions is not kept for kept in new.actions.values()):
            actions.close(wait=False)
    if old.mqtt is not None and old.mqtt is not new.mqtt:
        old.mqtt.close()


def close(parts: Parts, wait: bool = False) -> None:
    """Close every part; `wait` lets running hooks finish first (the daemon's stop)."""
    for actions in parts.actions.values():
        actions.close(wait=wait)
    if parts.mqtt is not None:
        parts.mqtt.close()
    parts.audit.close()
    parts.pipeline.close()
