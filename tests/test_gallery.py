from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from accessd.config import parse_config
from accessd.gallery import scan
from accessd.model import stack
from accessd.pipeline import Pipeline
from tests.conftest import LFW, REPO, SAMPLES


@pytest.fixture(scope="module")
def pipeline(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    state = tmp_path_factory.mktemp("state")
    cfg = parse_config({"model": {"path": str(tiny_model)}, "state_dir": str(state),
                        "detector": {"models_dir": str(REPO / "models/detector")}}, REPO)
    p = Pipeline(cfg)
    yield p
    p.close()


def make_gallery(root: Path) -> None:
    for person in ("Colin_Powell", "Tony_Blair"):
        (root / person).mkdir(parents=True)
        for p in sorted((LFW / person).glob("*.jpg"))[:3]:
            shutil.copy(p, root / person / p.name)


def test_bad_photos_are_skipped_by_name_and_rest_stays_usable(pipeline: Pipeline, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "verification_images"
    make_gallery(root)
    ann = root / "Colin_Powell"
    (ann / "zero.jpg").write_bytes(b"")
    (ann / "truncated.jpg").write_bytes((SAMPLES / "obama.jpg").read_bytes()[:400])
    cv2.imwrite(str(ann / "blank.png"), np.full((300, 300, 3), 255, np.uint8))
    shutil.copy(SAMPLES / "two_people.jpg", ann / "group.jpg")
    (ann / "notes.txt").write_text("not a photo")
    shutil.copy(SAMPLES / "32bit.png", root / "alpha.png")  # top level: the default person
    caplog.set_level(logging.WARNING)
    g = pipeline.load_gallery(root)
    assert g.counts() == {"Colin_Powell": 3, "Tony_Blair": 3, "owner": 1}
    reasons = {s.path.name: s.reason for s in g.skipped}
    assert reasons["zero.jpg"] == "empty file"
    assert "corrupt" in reasons["truncated.jpg"] or "not a readable" in reasons["truncated.jpg"]
    assert reasons["blank.png"] == "no face found"
    assert "2 faces found" in reasons["group.jpg"]
    assert "notes.txt" not in reasons
    for name in ("zero.jpg", "truncated.jpg", "blank.png", "group.jpg"):
        assert name in caplog.text
    assert g.embeddings.shape == (7, 128)


def test_symlink_outside_gallery_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    root = tmp_path / "g"
    (root / "eve").mkdir(parents=True)
    outside = tmp_path / "secret.jpg"
    shutil.copy(SAMPLES / "biden.jpg", outside)
    os.symlink(outside, root / "eve" / "biden.jpg")
    found, refused = scan(root, "owner")
    assert found == [] and "outside the gallery" in refused[0].reason


def test_embeddings_are_cached_by_content(pipeline: Pipeline, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "g"
    make_gallery(root)
    first = pipeline.load_gallery(root)
    caplog.clear()
    caplog.set_level(logging.INFO)
    again = pipeline.load_gallery(root)
    assert "(0 newly embedded" in caplog.text
    np.testing.assert_array_equal(first.embeddings, again.embeddings)
    shutil.copy(SAMPLES / "biden.jpg", root / "Tony_Blair" / "new.jpg")
    caplog.clear()
    assert len(pipeline.load_gallery(root)) == 7 and "(1 newly embedded" in caplog.text


def test_same_person_scores_higher_than_strangers_with_trained_model(trained_model: Path, tmp_path: Path) -> None:
    cfg = parse_config({"model": {"path": str(trained_model)}, "state_dir": str(tmp_path),
                        "detector": {"models_dir": str(REPO / "models/detector")}}, REPO)
    p = Pipeline(cfg)
    from accessd.imageio import read_image

    def crop(path: Path) -> tuple[np.ndarray, ...]:
        image = read_image(path)
        return p.crop(image, max(p.detector.detect(image), key=lambda f: f.area))

    obama = [crop(SAMPLES / n) for n in ("obama.jpg", "obama3.jpg", "obama-240p.jpg")]
    biden = crop(SAMPLES / "biden.jpg")
    emb = p.model.embed(stack(obama[1:]))
    _, same = p.model.embed_and_score(stack(obama[:1]), emb)
    _, other = p.model.embed_and_score(stack([biden]), emb)
    p.close()
    assert same.min() > other.max(), (same, other)


def test_refused_photos_are_remembered_by_content(pipeline: Pipeline, tmp_path: Path) -> None:
    from accessd.gallery import EmbeddingCache, load_gallery

    cache = EmbeddingCache(tmp_path / "state", "test")
    root = tmp_path / "g"
    (root / "ann").mkdir(parents=True)
    cv2.imwrite(str(root / "ann" / "wall.png"), np.full((200, 200, 3), 90, np.uint8))
    shutil.copy(sorted((LFW / "Colin_Powell").glob("*.jpg"))[0], root / "ann" / "face.jpg")
    calls: list[int] = []

    def counting_detect(image: np.ndarray) -> list:  # type: ignore[type-arg]
        calls.append(1)
        return pipeline.detector.detect(image)

    def load() -> object:
        return load_gallery(root, "owner", counting_detect, pipeline.model.embed, pipeline.model.contract.crops,
                            cache, pipeline.model.contract.embedding_size)

    first = load()
    assert len(calls) == 2
    again = load()
    assert len(calls) == 2  # neither the embedded photo nor the refused one is detected again
    assert [s.reason for s in again.skipped] == [s.reason for s in first.skipped] == ["no face found"]  # type: ignore[attr-defined]


def test_a_cached_embedding_of_another_width_is_embedded_again_never_misread(
        pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from accessd.gallery import EmbeddingCache, load_gallery

    cache = EmbeddingCache(tmp_path / "state", "test")
    root = tmp_path / "g"
    (root / "ann").mkdir(parents=True)
    photo = sorted((LFW / "Colin_Powell").glob("*.jpg"))[0]
    shutil.copy(photo, root / "ann" / "face.jpg")
    import hashlib

    # What an older model with another embedding width would have left under the same key.
    cache.put(hashlib.sha256(photo.read_bytes()).hexdigest(), np.ones(64, np.float32))
    dim = pipeline.model.contract.embedding_size
    g = load_gallery(root, "owner", pipeline.detector.detect, pipeline.model.embed, pipeline.model.contract.crops,
                     cache, dim)
    assert g.embeddings.shape == (1, dim) and not np.all(g.embeddings == 1)
    assert "has shape (64,), not (128,): embedding it again" in caplog.text


def test_faces_marked_not_this_person_load_as_negatives_and_revoke(pipeline: Pipeline, tmp_path: Path) -> None:
    root = tmp_path / "g"
    for person, photos in (("ann", ["Aaron_Peirsol"]), ("bob", ["Abdullah_Gul"])):
        (root / person).mkdir(parents=True)
        for name in photos:
            for i, src in enumerate(sorted((LFW / name).glob("*.jpg"))[:2]):
                shutil.copy(src, root / person / f"{i}.jpg")
    marked = root / "ann" / "not-this-person"
    marked.mkdir()
    shutil.copy(sorted((LFW / "Abdullah_Gul").glob("*.jpg"))[2], marked / "snap1.jpg")
    (root / "ghost" / "not-this-person").mkdir(parents=True)  # marked faces of nobody enrolled
    shutil.copy(sorted((LFW / "Abdullah_Gul").glob("*.jpg"))[3], root / "ghost" / "not-this-person" / "s.jpg")
    g = pipeline.load_gallery(root)
    assert g.people == ("ann", "bob") and len(g.photos) == 4 and all(p.path.parent.name != "not-this-person"
                                                                   for p in g.photos)
    assert [p.path.name for p in g.negative_photos] == ["snap1.jpg"] and g.negative_of.tolist() == [0]
    assert g.negatives.shape == (1, g.embeddings.shape[1]) and g.photos_and_templates.shape[0] == 4 + 2 + 1
    # A revoked marked face (the file removed in the console) is out at once; removing ann drops hers.
    assert len(g.without(frozenset({(marked / "snap1.jpg").resolve()})).negative_of) == 0
    ann = frozenset(p.path.resolve() for p in g.photos if p.person == "ann")
    without_ann = g.without(ann)
    assert without_ann.people == ("bob",) and len(without_ann.negative_of) == 0
