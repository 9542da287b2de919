"""faceres through our own TensorFlow.js reader: every byte accounted for, the Keras rebuild equal to the graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LFW

pytest.importorskip("tensorflow", reason="requirements-train.txt is installed by install.sh")


@pytest.fixture(scope="module")
def models_dir() -> Path:
    from train.import_faceres import default_models_dir

    path = default_models_dir()
    if not (path / "faceres.json").is_file():
        pytest.skip(f"{path}: the faceres files from ../shared are missing")
    return path


@pytest.fixture(scope="module")
def graph(models_dir: Path) -> object:
    from train.import_faceres import read_pinned

    return read_pinned(models_dir)


def test_reader_reads_every_weight_and_widens_float16(graph: object) -> None:
    from train.tfjs_graph import GraphModel

    assert isinstance(graph, GraphModel)
    assert graph.inputs == ("input_1",)
    ops = [n.op for n in graph.nodes.values()]
    assert ops.count("Conv2D") == 14 and ops.count("DepthwiseConv2dNative") == 13
    kernel = graph.const("conv1/convolution/merged_input")
    assert kernel.dtype == np.float32 and kernel.shape == (3, 3, 3, 32)
    # Weights stored as float16: every value is exactly a float16 value, widened.
    assert np.array_equal(kernel.astype(np.float16).astype(np.float32), kernel)


def test_reader_names_the_file_of_short_weights_and_a_changed_pin(models_dir: Path, tmp_path: Path) -> None:
    from train.import_faceres import read_pinned
    from train.tfjs_graph import GraphModelError, load

    shutil.copy(models_dir / "faceres.json", tmp_path / "faceres.json")
    (tmp_path / "faceres.bin").write_bytes((models_dir / "faceres.bin").read_bytes()[:100_000])
    with pytest.raises(GraphModelError, match=r"faceres.json: weight shards end inside"):
        load(tmp_path / "faceres.json")
    with pytest.raises(ValueError, match=r"faceres.bin: sha256 .* is not the pinned"):
        read_pinned(tmp_path)
    doc = json.loads((models_dir / "faceres.json").read_text())
    doc["modelTopology"]["node"][-1]["op"] = "Erf"
    (tmp_path / "faceres.json").write_text(json.dumps(doc))
    shutil.copy(models_dir / "faceres.bin", tmp_path / "faceres.bin")
    from train.tfjs_graph import evaluate

    odd = load(tmp_path / "faceres.json")
    last = list(odd.nodes)[-1]
    with pytest.raises(GraphModelError, match=f"node {last}: op Erf is not supported"):
        evaluate(odd, {"input_1": np.zeros((1, 224, 224, 3), np.float32)}, last)


@pytest.fixture(scope="module")
def face_crops() -> np.ndarray:
    """Three people's real LFW faces, cut as the door cuts them for faceres."""
    from accessd.align import crop_face, nearest_to_center
    from accessd.detector import FaceDetector
    from accessd.imageio import read_image
    from train.fusion import DETECTOR, FACERES_CROP

    photos = [sorted((LFW / p).glob("*.jpg"))[0] for p in ("Colin_Powell", "Serena_Williams", "Tony_Blair")]
    crops = []
    with FaceDetector(Path(DETECTOR), 0.5) as det:
        for path in photos:
            image = read_image(path)
            face = nearest_to_center(det.detect(image), image.shape[1], image.shape[0])
            assert face is not None, path
            crops.append(crop_face(image, face, FACERES_CROP))
    return np.stack(crops)


def test_keras_rebuild_equals_the_literal_graph_on_real_faces(graph: object, face_crops: np.ndarray) -> None:
    from train.import_faceres import PARITY_TOLERANCE, build_faceres, parity

    model = build_faceres(graph)  # type: ignore[arg-type]
    assert parity(model, graph, face_crops) <= PARITY_TOLERANCE  # type: ignore[arg-type]
    # And it tells these three people apart: an identity descriptor, not noise.
    emb = np.asarray(model(face_crops.astype(np.float32)[..., ::-1] - [103.939, 116.779, 123.68]))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert (emb @ emb.T)[np.triu_indices(3, 1)].max() < 0.9


def test_the_served_embedding_is_the_mirror_mean_of_a_unit_length(graph: object, face_crops: np.ndarray) -> None:
    """The door's faceres embedding (train.import_faceres.embed_for_serving): the same for a crop and
    its mirror image, and of unit length, where the plain tower's differs between the two."""
    from train.import_faceres import build_faceres, embed_crops, preprocess

    crops = face_crops
    mirrored = np.ascontiguousarray(crops[:, :, ::-1])
    model = build_faceres(graph)  # type: ignore[arg-type]
    served, served_mirror = embed_crops(model, crops), embed_crops(model, mirrored)
    np.testing.assert_allclose(served, served_mirror, atol=1e-5)
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    plain = np.asarray(model(preprocess(crops), training=False))
    plain_mirror = np.asarray(model(preprocess(mirrored), training=False))
    assert np.abs(plain - plain_mirror).max() > 1e-3
    assert embed_crops(model, crops[:0]).shape == (0, served.shape[1])
