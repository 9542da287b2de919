from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from accessd.align import CropSpec
from accessd.model import CONTRACT_KEY, FaceCrops, ModelError, SiameseModel


def test_contract_is_read_from_metadata(tiny_model: Path) -> None:
    m = SiameseModel(tiny_model)
    c = m.contract
    assert c.input_size == (64, 64) and c.towers[0].color_order == "RGB" and c.embedding_size == 128
    assert len(c.towers) == 1 and c.cascade_gate < 0
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


def test_the_resnet_alone_stays_selectable_with_its_landmark_chips() -> None:
    from tests.conftest import REPO

    path = REPO / "models/accessd-resnet.onnx"
    c = SiameseModel(path).contract
    assert c.architecture == "resnet" and c.towers[0].alignment == "landmarks" and c.input_size == (150, 150)
    assert c.crops == (CropSpec(150, 0.25, "landmarks"),)
    assert path.stat().st_size <= 25_000_000
    # Chosen on held-out training people, never on pairsDevTest; the evaluation embedded is DevTest's.
    assert c.raw["training"]["excluded_eval_people"] is True
    assert c.raw["evaluation"]["pairs_file"] == "pairsDevTest.txt"


def test_compact_model_stays_selectable_with_its_box_crops() -> None:
    from tests.conftest import REPO

    c = SiameseModel(REPO / "models/accessd-compact.onnx").contract
    assert c.architecture == "compact" and c.towers[0].alignment == "box" and c.crops[0].size == 64


def test_shipped_default_fuses_two_towers_and_says_so_in_its_contract(trained_model: Path) -> None:
    from accessd.config import ModelConfig

    assert trained_model.name == ModelConfig().path.name
    c = SiameseModel(trained_model).contract
    assert c.architecture == "resnet+faceres" and len(c.towers) == 2
    assert c.crops == (CropSpec(150, 0.25, "landmarks"), CropSpec(224, 0.4, "landmarks"))
    assert (c.towers[0].embedding_size, c.towers[1].embedding_size, c.embedding_size) == (128, 1024, 1152)
    assert c.towers[1].color_order == "BGR" and c.raw["second"]["source"]["package"].endswith("@3.0.4")
    # The head was trained and its thresholds chosen on training people; DevTest is only reported.
    assert c.raw["training"]["excluded_eval_people"] is True
    assert c.raw["fusion_training"]["people"] > 3000
    # The cascade can only skip faces that could not be granted: at the gate, with the
    # stranger-mean cosine the graph assumes there, the fused score is below the threshold.
    f = c.raw["fusion"]
    logit_gate = np.log(c.cascade_gate / (1 - c.cascade_gate))
    at_gate = 1 / (1 + np.exp(-(f["a"] * logit_gate + f["b"] * f["stranger_mean_cos2"] + f["c"])))
    assert 0 < c.cascade_gate < 1 and at_gate <= c.detection_threshold


def sample_faces(m: SiameseModel) -> list[FaceCrops]:
    """obama.jpg, obama3.jpg and biden.jpg, each cut for every tower of `m`."""
    from accessd.align import crop_face, largest
    from accessd.detector import FaceDetector
    from accessd.imageio import read_image
    from tests.conftest import DETECTORS, SAMPLES

    faces = []
    with FaceDetector(DETECTORS / "face_detection_full_range_sparse.tflite", 0.5) as det:
        for name in ("obama.jpg", "obama3.jpg", "biden.jpg"):
            image = read_image(SAMPLES / name)
            face = largest(det.detect(image))
            assert face is not None
            faces.append(tuple(crop_face(image, face, spec) for spec in m.contract.crops))
    return faces


def test_fused_model_needs_both_crops_and_the_cascade_skips_the_second_tower(trained_model: Path) -> None:
    from accessd.model import ALWAYS, stack

    m = SiameseModel(trained_model)
    faces = sample_faces(m)
    with pytest.raises(ModelError, match="needs 2 crops per face, got 1"):
        m.embed(stack(faces)[0])
    gallery = m.embed(stack(faces[1:2]))  # obama3, enrolled
    assert np.linalg.norm(gallery[:, 128:]) > 0.99  # enrolment always runs both towers (a unit vector)
    obama_emb, obama = m.embed_and_score(stack(faces[:1]), gallery)
    biden_emb, biden = m.embed_and_score(stack(faces[2:]), gallery)
    assert obama[0, 0] > m.contract.detection_threshold > biden[0, 0]
    assert np.linalg.norm(obama_emb[:, 128:]) > 0.99  # a face near the gallery: both towers ran
    # A stranger nowhere near anyone enrolled: the second tower was skipped (its columns are
    # zero) and the score stays below the threshold; run in full, still refused.
    assert np.all(biden_emb[:, 128:] == 0)
    _, biden_full = m.embed_and_score(stack(faces[2:]), gallery, gate=ALWAYS)
    assert biden_full[0, 0] < m.contract.detection_threshold


def test_the_shipped_model_embeds_a_face_and_its_mirror_image_alike(trained_model: Path) -> None:
    """Both towers take the mean of the crop's and its mirror image's embedding (the ResNet as dlib's
    recipe, faceres since it cut the held-out misses), so a face and its mirror image are one face."""
    from accessd.model import stack

    m = SiameseModel(trained_model)
    assert m.contract.raw["test_time_flip"] is True and m.contract.raw["second"]["test_time_flip"] is True
    crops = stack(sample_faces(m))
    mirrored = tuple(np.ascontiguousarray(c[:, :, ::-1]) for c in crops)
    np.testing.assert_allclose(m.embed(mirrored), m.embed(crops), atol=1e-5)


def test_the_shipped_model_scores_every_face_against_its_cohort_of_training_strangers(trained_model: Path) -> None:
    """obama3 enrolled: obama's quorum score stands far out from his own cohort scores, biden's does
    not; the cohort never makes the second tower run (the gate looks at the gallery alone)."""
    from accessd.decide import cohort_z
    from accessd.model import ALWAYS, stack

    m = SiameseModel(trained_model)
    c = m.contract
    assert c.cohort_threshold is not None and c.raw["cohort"]["photos"] > 1000 and c.raw["cohort"]["k"] == 100
    assert "DevTest" in c.raw["cohort"]["people_from"] or "pairsDevTest" in c.raw["cohort"]["people_from"]
    faces = sample_faces(m)
    gallery = m.embed(stack(faces[1:2]))
    obama = m.score(stack(faces[:1]), gallery)
    biden = m.score(stack(faces[2:]), gallery, gate=ALWAYS)
    assert obama.cohort is not None and biden.cohort is not None and obama.cohort.shape == (1, 2)
    assert obama.cohort[0, 1] > 0  # a spread: k scores, not one
    assert cohort_z(float(obama.scores[0, 0]), obama.cohort[0]) > c.cohort_threshold
    assert cohort_z(float(biden.scores[0, 0]), biden.cohort[0]) < c.cohort_threshold
    # Skipped by the cascade against this gallery, whatever the cohort holds.
    assert np.all(m.score(stack(faces[2:]), gallery).embeddings[:, 128:] == 0)
