"""train.fusion's embedding caches: one per tower, keyed by that tower's bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from train.fusion import cache_files, embed_lfw

PATHS = ["Ann_Smith/Ann_Smith_0001.jpg", "Ann_Smith/Ann_Smith_0002.jpg", "Bo_Li/Bo_Li_0001.jpg"]


def _tower_file(tmp_path: Path, name: str, data: bytes) -> Path:
    f = tmp_path / name
    f.write_bytes(data)
    return f


def test_each_towers_embeddings_are_read_from_its_own_cache_and_a_new_tower_is_not_misread(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    resnet = _tower_file(tmp_path, "resnet.keras", b"resnet weights")
    faceres = _tower_file(tmp_path, "faceres.keras", b"faceres weights")
    e1 = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    e2 = -np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    saved1, saved2 = cache_files(cache, resnet, faceres)
    assert saved2 is not None and saved1 != saved2
    np.savez(saved1, paths=np.array(PATHS), e=e1)
    np.savez(saved2, paths=np.array(PATHS), e=e2)
    lfw = tmp_path / "no-lfw-needed"  # a hit embeds nothing, so it never reads a photo

    paths, people, got1, got2 = embed_lfw(lfw, resnet, faceres, cache)
    assert paths == PATHS and people == ["Ann_Smith", "Ann_Smith", "Bo_Li"]
    assert got2 is not None
    np.testing.assert_array_equal(got1, e1)
    np.testing.assert_array_equal(got2, e2)

    _, _, only1, none2 = embed_lfw(lfw, resnet, None, cache)  # the ResNet alone: faceres not touched
    np.testing.assert_array_equal(only1, e1)
    assert none2 is None

    # A tower of other bytes (a fine-tuned one is the same size) has no cache: it must be embedded,
    # here from photos that do not exist, so the attempt fails rather than returning e2.
    tuned = _tower_file(tmp_path, "tuned.keras", b"faceres weightz")
    with pytest.raises(FileNotFoundError, match="no-lfw-needed"):
        embed_lfw(lfw, resnet, tuned, cache)
