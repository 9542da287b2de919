"""SIGHUP rebuilds: what changed is rebuilt, the rest reused, a failure leaves the running parts alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from accessd.audit import AuditLog
from accessd.config import Config, load_config
from accessd.mqtt import open_mqtt
from accessd.pipeline import Pipeline
from accessd.reload import Parts, close, door_actions, rebuild, retire
from accessd.types import Decision, Outcome
from tests.test_daemon import PERSON, enrol, photos, write_config


def running_parts(config: Config) -> Parts:
    pipeline = Pipeline(config)
    return Parts(config, pipeline, pipeline.load_gallery(), AuditLog.from_config(config.audit),
                 door_actions(config), open_mqtt(config.mqtt))


@pytest.fixture
def config(tmp_path: Path, tiny_model: Path) -> Config:
    gallery = tmp_path / "g"
    enrol(gallery, PERSON, photos(PERSON)[:3])
    return load_config(write_config(tmp_path / "config.yaml", tiny_model, gallery={"dir": str(gallery)},
                                    audit={"path": str(tmp_path / "a.jsonl")}))


def test_threshold_change_reuses_pipeline_and_audit_log(config: Config) -> None:
    old = running_parts(config)
    new_config = dataclasses.replace(config, decision=dataclasses.replace(config.decision, margin=0.3))
    new = rebuild(old, new_config)
    assert new.pipeline is old.pipeline and new.audit is old.audit and new.actions["door"] is not old.actions["door"]
    new.pipeline.retune(new_config)  # what the daemon does when it swaps the parts in
    assert new.pipeline.thresholds.margin == 0.3  # the reused pipeline judges with the new thresholds
    assert new.gallery.counts() == {PERSON: 3}
    retire(old, new)
    # The shared audit log is still open after the old parts retired.
    new.audit.append(Decision(Outcome.DENY, None, 0.1, 0.0, 1, 0.0, "test", "unknown face"))
    assert config.audit.path.read_text().count("\n") == 1
    close(new)


def test_new_model_means_new_pipeline_and_freshly_embedded_gallery(config: Config, trained_model: Path) -> None:
    old = running_parts(config)
    new_config = dataclasses.replace(config, model=dataclasses.replace(config.model, path=trained_model))
    new = rebuild(old, new_config)
    try:
        assert new.pipeline is not old.pipeline
        assert new.pipeline.model.sha256 != old.pipeline.model.sha256
        assert new.gallery.embeddings.shape[0] == 3
        assert new.gallery.embeddings.shape[1] == new.pipeline.model.contract.embedding_size
    finally:
        retire(old, new)
        close(new)


def test_failed_rebuild_leaves_the_running_parts_untouched(config: Config, tmp_path: Path) -> None:
    old = running_parts(config)
    broken = dataclasses.replace(config, model=dataclasses.replace(config.model, path=tmp_path / "gone.onnx"))
    with pytest.raises(Exception, match="gone.onnx"):
        rebuild(old, broken)
    # The old pipeline still analyses frames and the old audit log still writes.
    from accessd.imageio import read_image

    analysis = old.pipeline.analyse(read_image(photos(PERSON)[5]), old.gallery)
    assert len(analysis.faces) == 1
    close(old)


def test_a_cohort_threshold_for_a_model_without_a_cohort_is_refused_before_the_swap(config: Config) -> None:
    from accessd.model import ModelError

    old = running_parts(config)
    assert old.pipeline.thresholds.cohort is None  # the tiny model has no cohort: the check is off
    asks = dataclasses.replace(config, decision=dataclasses.replace(config.decision, cohort_threshold=4.0))
    with pytest.raises(ModelError, match=r"has no cohort, so decision.cohort_threshold 4.0 cannot apply"):
        rebuild(old, asks)
    assert old.pipeline.thresholds.cohort is None and old.pipeline.config is config  # nothing changed
    off = dataclasses.replace(asks, decision=dataclasses.replace(asks.decision, cohort_check=False))
    new = rebuild(old, off)
    assert new.pipeline is old.pipeline  # switched off, it is accepted
    retire(old, new)
    close(new)
