from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from accessd.model import CONTRACT_KEY, ModelError, SiameseModel


def test_contract_is_read_from_metadata(tiny_model: Path) -> None:
    m = SiameseModel(tiny_model)
    c = m.contract
    assert c.input_size == (64, 64) and c.color_order == "RGB" and c.embedding_size == 128
    assert 0.0 <= c.detection_threshold <= 1.0 and len(c.weights_sha256) == 64
    assert m.provider == "CPUExecutionProvider"


def test_embed_and_score_batch_against_gallery(tiny_model: Path) -> None:
    m = SiameseModel(tiny_model)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    emb, scores = m.embed_and_score(crops, m.embed(crops[:2]))
    assert emb.shape == (3, 128) and scores.shape == (3, 2)
    assert np.all((scores >= 0) & (scores <= 1))
    # Batched scoring equals one-at-a-time scoring.
    single = np.concatenate([m.embed_and_score(c[None], emb[:2])[1] for c in crops])
    np.testing.assert_allclose(single, scores, atol=1e-5)
    assert m.embed_and_score(crops, np.zeros((0, 128), np.float32))[1].shape == (3, 0)


def test_unavailable_cuda_falls_back_to_cpu_and_logs_it(tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    m = SiameseModel(tiny_model, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert m.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert f"on {m.provider}" in caplog.text
    fallback = [r for r in caplog.records if "is unavailable here" in r.getMessage()]
    if m.provider == "CPUExecutionProvider":  # this machine has no usable CUDA: one warning says so
        assert [(r.levelno, r.getMessage()) for r in fallback] == [
            (logging.WARNING, "CUDAExecutionProvider is unavailable here (missing libraries?); "
                              "falling back to CPUExecutionProvider")]
    else:
        assert fallback == []


def test_model_without_contract_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelError, match=f"bare.onnx: no {CONTRACT_KEY}"):
        SiameseModel(bare)


def test_contract_disagreeing_with_graph_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(tiny_model))
    meta = json.loads(proto.metadata_props[0].value)
    meta["input_size"] = [100, 100]
    proto.metadata_props[0].value = json.dumps(meta)
    wrong = tmp_path / "wrong.onnx"
    onnx.save(proto, str(wrong))
    with pytest.raises(ModelError, match="wrong.onnx: input 'image' has shape"):
        SiameseModel(wrong)


def test_missing_and_truncated_files(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="absent.onnx: cannot read"):
        SiameseModel(tmp_path / "absent.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(ModelError, match="cut.onnx: ONNX Runtime cannot load it"):
        SiameseModel(cut)


def test_shipped_default_is_dlibs_resnet_fine_tuned_with_landmark_chips(trained_model: Path) -> None:
    c = SiameseModel(trained_model).contract
    assert c.architecture == "resnet" and c.alignment == "landmarks" and c.input_size == (150, 150)
    assert c.crop.method == "landmarks" and c.crop.margin == 0.25
    assert trained_model.stat().st_size <= 25_000_000
    # Chosen on held-out training people, never on pairsDevTest; the evaluation embedded is DevTest's.
    assert c.raw["training"]["excluded_eval_people"] is True
    assert c.raw["evaluation"]["pairs_file"] == "pairsDevTest.txt"


def test_compact_model_stays_selectable_with_its_box_crops() -> None:
    from tests.conftest import REPO

    c = SiameseModel(REPO / "models/accessd-compact.onnx").contract
    assert c.architecture == "compact" and c.alignment == "box" and c.crop.size == 64
