"""A few-step training run: checkpoint, resume, evaluate, export with parity; disjointness refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from tests.conftest import LFW, PROTOCOL, run_py


def test_checkpoint_state_and_history(tiny_run: Path) -> None:
    state = json.loads((tiny_run / "state.json").read_text())
    assert state["epoch"] == 1 and state["arch"] == "compact"
    history = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines()]
    assert history[0]["epoch"] == 1 and "score_precision" in history[0] and "val_auc" in history[0]


def test_resume_continues_from_checkpoint(tiny_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    held_out = json.loads((run / "state.json").read_text())["validation_people"]
    assert held_out
    result = run_py("-m", "train.train", "--data", str(LFW), "--out", str(run), "--max-people", "30",
                    "--epochs", "2", "--pairs-per-epoch", "64", "--batch-size", "16", "--checkpoint-every", "1",
                    "--cache-dir", str(cache_dir), "--workers", "1", "--resume")
    assert "resumed from" in result.stderr and "at epoch 1" in result.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2
    assert state["validation_people"] == held_out  # a resumed run keeps its held-out people


def test_training_refuses_people_of_the_eval_list(cache_dir: Path, tmp_path: Path) -> None:
    # The first LFW people alphabetically include Abdullah_Gul, who is in pairsDevTest.txt.
    result = run_py("-m", "train.train", "--data", str(LFW), "--out", str(tmp_path / "r"), "--max-people", "30",
                    "--epochs", "1", "--eval-pairs", str(PROTOCOL / "pairsDevTest.txt"),
                    "--cache-dir", str(cache_dir), check=False)
    assert result.returncode == 2
    assert "people named in" in result.stderr and "Abdullah_Gul" in result.stderr
    assert not (tmp_path / "r" / "checkpoint.keras").exists()


def test_evaluate_keras_and_onnx_agree(tiny_run: Path, tiny_model: Path, cache_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    lines = (PROTOCOL / "pairsDevTest.txt").read_text().splitlines()
    pairs.write_text("\n".join(lines[:40] + lines[500:540]) + "\n")
    out = {}
    for name, model in (("keras", tiny_run / "checkpoint.keras"), ("onnx", tiny_model)):
        result = run_py("-m", "train.evaluate", "--model", str(model), "--pairs", str(pairs), "--json",
                        "--cache-dir", str(cache_dir), "--plots", str(tmp_path / name),
                        "--dump-scores", str(tmp_path / f"{name}.npy"))
        out[name] = json.loads(result.stdout)
        assert (tmp_path / name / "roc.png").stat().st_size > 1000
        assert (tmp_path / name / "scores.png").stat().st_size > 1000
    # The same pair scores (a few-step model's scores are near-ties, so ranking metrics
    # are compared through the scores they come from).
    keras_scores, onnx_scores = np.load(tmp_path / "keras.npy"), np.load(tmp_path / "onnx.npy")
    assert keras_scores.shape == (80,) and np.max(np.abs(keras_scores - onnx_scores)) <= 1e-4
    assert out["keras"]["threshold"] == out["onnx"]["threshold"]
    for key in ("accuracy", "auc", "eer", "tar_at_far_1e-3", "best_accuracy", "precision", "recall", "f1"):
        assert 0.0 <= out["onnx"][key] <= 1.0, key
    assert out["onnx"]["pairs"] == 80


def test_export_writes_contract_metadata(tiny_model: Path) -> None:
    proto = onnx.load(str(tiny_model))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["accessd.contract"])
    for key in ("input_size", "color_order", "mean", "std", "embedding_size", "architecture", "training",
                "evaluation", "detection_threshold", "verification_threshold", "weights_sha256"):
        assert key in meta
    assert [i.name for i in proto.graph.input] == ["image", "gallery"]
    assert [o.name for o in proto.graph.output] == ["embedding", "scores"]


def test_export_parity_failure_is_loud(tiny_run: Path, tmp_path: Path) -> None:
    # A tolerance no float32 model can meet makes the parity check fail: export must exit non-zero
    # and write nothing.
    out = tmp_path / "m.onnx"
    result = run_py("-c", "import sys, runpy; sys.argv = ['to_onnx.py', sys.argv[1], sys.argv[2]]; "
                    "import export.to_onnx as e; e.PARITY_TOLERANCE = -1.0; raise SystemExit(e.main())",
                    str(tiny_run / "checkpoint.keras"), str(out), check=False)
    assert result.returncode == 1 and "parity check FAILED" in result.stderr
    assert not out.exists()


def test_metrics_on_known_scores() -> None:
    from train.metrics import auc, eer, kfold_accuracy, roc, tar_at_far

    same = np.array([True] * 50 + [False] * 50)
    perfect = np.r_[np.linspace(0.6, 1, 50), np.linspace(0, 0.4, 50)]
    r = roc(perfect, same)
    assert auc(r) == 1.0 and eer(r) == 0.0 and tar_at_far(r, 1e-3) == 1.0
    assert kfold_accuracy(perfect, same, np.arange(100) % 10)[0] == 1.0
    flipped = roc(1 - perfect, same)
    assert auc(flipped) == 0.0


def test_seed_layout_trains_under_mirrored_strategy_with_contrastive_loss(tmp_path: Path, cache_dir: Path) -> None:
    import shutil

    data = tmp_path / "data"
    person = sorted((LFW / "Colin_Powell").glob("*.jpg"))
    for folder, photos in (("anchor", person[:6]), ("positive", person[6:12]),
                           ("negative", [next((LFW / p).glob("*.jpg")) for p in ("Tony_Blair", "Serena_Williams",
                                                                                "Hugo_Chavez", "Ariel_Sharon",
                                                                                "Junichiro_Koizumi", "Jean_Chretien")])):
        (data / folder).mkdir(parents=True)
        for p in photos:
            shutil.copy(p, data / folder / p.name)
    out = tmp_path / "run"
    result = run_py("-m", "train.train", "--data", str(data), "--out", str(out), "--epochs", "1",
                    "--pairs-per-epoch", "32", "--batch-size", "8", "--strategy", "mirrored", "--loss", "contrastive",
                    "--cache-dir", str(cache_dir), "--workers", "1")
    assert (out / "checkpoint.keras").is_file()
    assert "training on 18 photos of 7 people" in result.stderr  # anchor+positive are one person
    history = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    assert "distance_loss" in history
