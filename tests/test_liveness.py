"""Liveness on real footage: the shared live clip (bona fide) against still frames and synthesised attacks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from accessd.detector import FaceDetector
from accessd.imageio import to_rgb
from accessd.instrument import picture_frame
from accessd.landmarks import FaceMesh, MeshError
from accessd.liveness import BlinkDetector, eye_aspect_ratio
from accessd.provision import model_path
from accessd.types import Face, Image
from tests.conftest import DETECTORS, REPO, SHARED, run_py
from tests.test_daemon import audit, run_daemon, write_config

VIDEO = SHARED / "data/video/webcam_face.mp4"
MESH = REPO / "models/face_mesh.onnx"
# Where the clip's blinks begin, and its downward glance (../shared/notes/face-mesh.md).
BLINKS = (123, 140, 327)
GLANCE = range(240, 276)


@pytest.fixture(scope="module")
def clip() -> list[tuple[Image, Face]]:
    """Every frame of the live clip with its face, as the door's detector finds it."""
    out = []
    cap = cv2.VideoCapture(str(VIDEO))
    with FaceDetector(model_path(DETECTORS, "full_range"), 0.5) as det:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = to_rgb(bgr)
            out.append((rgb, max(det.detect(rgb), key=lambda f: f.area)))
    cap.release()
    assert len(out) == 383
    return out


@pytest.fixture(scope="module")
def ears(clip: list[tuple[Image, Face]]) -> list[float]:
    mesh = FaceMesh(MESH)
    marks = [mesh.landmarks(image, [face])[0] for image, face in clip]
    assert min(m.presence for m in marks) > 0.9  # the mesh sees a face in every frame
    return [eye_aspect_ratio(m.points) for m in marks]


@pytest.mark.parametrize("step", [1, 2, 3])  # 30, 15 and 10 frames/s
def test_the_clips_three_blinks_are_found_and_its_glance_is_not(ears: list[float], step: int) -> None:
    for phase in range(step):
        det = BlinkDetector()
        starts = [round(b.start * 30) for i in range(phase, len(ears), step)
                  if (b := det.add(i / 30, ears[i])) is not None]
        assert len(starts) == 3, (step, phase, starts)
        assert all(abs(s - b) <= 4 for s, b in zip(starts, BLINKS, strict=True)), (step, phase, starts)
        assert not any(s in GLANCE for s in starts)


def test_a_still_frame_never_blinks(ears: list[float]) -> None:
    """A photo: the same EAR every frame, with the jitter a camera adds."""
    rng = np.random.default_rng(0)
    det = BlinkDetector()
    assert not any(det.add(i / 15, ears[150] + rng.normal(0, 0.004)) for i in range(300))


def test_the_instrument_check_never_fires_on_the_live_clip(clip: list[tuple[Image, Face]]) -> None:
    flagged = [i for i, (image, face) in enumerate(clip) if picture_frame(image, face)]
    assert flagged == []


@pytest.mark.parametrize("species", ["print_hand", "print_bent", "phone_photo", "phone_video"])
def test_the_instrument_check_finds_a_pictures_frame(clip: list[tuple[Image, Face]], species: str) -> None:
    """Synthesised attacks (train/spoof_attacks.py) from the clip's own frames."""
    from train.spoof_attacks import ClipFrame, attack

    frames = [ClipFrame(image, face) for image, face in clip]
    rng = np.random.default_rng(7)
    found = []
    with FaceDetector(model_path(DETECTORS, "full_range"), 0.5) as det:
        for image in attack(species, frames, 150, 30, 20, 10.0, rng)[::2]:
            faces = det.detect(image)
            assert faces, species
            found.append(picture_frame(image, max(faces, key=lambda f: f.area)))
    # The door refuses an attempt once 2 of its frames show a frame; here 10 frames over 2 s show
    # it at least 3 times (per frame it is found in 73-100 % of the frames, train/spoof_eval.py).
    assert sum(1 for f in found if f) >= 3, found
    assert all(f.startswith("instrument: straight edges around the face on ") for f in found if f)


def test_a_phone_replaying_the_clip_from_its_glance_is_framed_though_its_bottom_edge_lies_far_below(
        clip: list[tuple[Image, Face]]) -> None:
    """From frame 233 the speaker looks down: her face sits small and high on the phone's screen and
    the bezel's bottom edge lies 1.8-2.4 face sizes below it. Two replays of 100 got in that way (the
    rule looked 1.8 sizes out on every side, and saw three sides); it now looks further down."""
    from train.spoof_attacks import ClipFrame, attack

    frames = [ClipFrame(image, face) for image, face in clip]
    found = []
    with FaceDetector(model_path(DETECTORS, "full_range"), 0.5) as det:
        for image in attack("phone_video", frames, 150, 233, 30, 10.0, np.random.default_rng(3))[::3]:
            faces = det.detect(image)
            assert faces
            found.append(picture_frame(image, max(faces, key=lambda f: f.area)))
    assert sum(1 for f in found if f) >= 9, found


def test_a_mesh_without_its_contract_is_refused(tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(MESH))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(MeshError, match="bare.onnx: no accessd.face_mesh metadata"):
        FaceMesh(bare)
    with pytest.raises(MeshError, match="absent.onnx"):
        FaceMesh(tmp_path / "absent.onnx")


def test_the_shipped_mesh_is_mediapipes_converted_and_checked(tmp_path: Path) -> None:
    """Rebuilt from the pinned wheel's TFLite, it checks parity itself and equals the committed file's output."""
    pytest.importorskip("tf2onnx", reason="the training extra (install.sh installs it)")
    out = tmp_path / "mesh.onnx"
    run_py("export/face_mesh_to_onnx.py", "--out", str(out))
    import onnxruntime as ort

    contract = json.loads(ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map["accessd.face_mesh"])
    assert contract["parity"]["max_abs_landmarks_px"] <= 0.01 and contract["parity"]["crops"] >= 20
    crops = np.random.default_rng(0).random((2, 192, 192, 3), np.float32)
    ours = ort.InferenceSession(str(out)).run(None, {"input_1": crops})
    shipped = ort.InferenceSession(str(MESH)).run(None, {"input_1": crops})
    np.testing.assert_allclose(ours[0], shipped[0], atol=1e-4)


# --- the daemon, end to end -------------------------------------------------------------------

@pytest.fixture(scope="module")
def speaker_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The speaker enrolled from six stills of her own recording."""
    root = tmp_path_factory.mktemp("gallery")
    (root / "speaker").mkdir()
    cap = cv2.VideoCapture(str(VIDEO))
    for i in range(0, 360, 60):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        assert ok
        cv2.imwrite(str(root / "speaker" / f"frame{i}.jpg"), frame)
    cap.release()
    return root


@pytest.fixture(scope="module")
def still_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One frame of the recording repeated for 8 s: a photo held still in front of the camera."""
    path = tmp_path_factory.mktemp("still") / "still.avi"
    cap = cv2.VideoCapture(str(VIDEO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 150)
    ok, frame = cap.read()
    cap.release()
    assert ok
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (frame.shape[1], frame.shape[0]))
    for _ in range(120):
        writer.write(frame)
    writer.release()
    return path


def decide(tmp_path: Path, model: Path, gallery: Path, video: Path, **liveness: object) -> list[dict[str, object]]:
    log = tmp_path / f"audit-{video.stem}-{len(liveness)}.jsonl"
    hook_out = tmp_path / f"hook-{video.stem}-{len(liveness)}.txt"
    hook = {"argv": [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'a').write("
                     "os.environ['ACCESSD_DECISION'] + ' ' + os.environ['ACCESSD_REASON'] + '\\n')", str(hook_out)],
            "on": ["spoof_suspected"]}
    cfg = write_config(tmp_path / "config.yaml", model, liveness=liveness, actions={"hooks": [hook]},
                       decision={"deny_interval_s": 1.0})
    result = run_daemon("run", "--config", str(cfg), "--source", str(video), "--gallery", str(gallery),
                        "--audit-log", str(log))
    assert result.returncode == 0, result.stderr[-2000:]
    records = audit(log)
    fired = hook_out.read_text().splitlines() if hook_out.exists() else []
    return [*records, *({"hook": line} for line in fired)]


def test_a_still_photo_is_refused_as_a_suspected_spoof_with_a_hook(
        tmp_path: Path, trained_model: Path, speaker_gallery: Path, still_video: Path) -> None:
    off = decide(tmp_path, trained_model, speaker_gallery, still_video, blink=False, instrument=False, motion=False)
    assert any(r.get("decision") == "grant" for r in off), off  # recognised: only liveness stands in the way
    records = decide(tmp_path, trained_model, speaker_gallery, still_video)  # the shipped defaults
    assert records and not any(r.get("decision") == "grant" for r in records), records
    spoofs = [r for r in records if r.get("decision") == "spoof_suspected"]
    assert spoofs and spoofs[0]["check"] == "blink" and spoofs[0]["closest"] == "speaker", records
    assert spoofs[0]["person"] is None and "no blink within 6 s" in str(spoofs[0]["reason"])
    hooks = [r["hook"] for r in records if "hook" in r]
    assert hooks and all(h.startswith("spoof_suspected no blink") for h in hooks), hooks


def test_the_live_recording_is_granted_after_its_first_blink(
        tmp_path: Path, trained_model: Path, speaker_gallery: Path) -> None:
    records = decide(tmp_path, trained_model, speaker_gallery, VIDEO)
    grants = [r for r in records if r.get("decision") == "grant"]
    assert grants and grants[0]["person"] == "speaker", records
    assert int(str(grants[0]["frame"])) >= BLINKS[0]  # not before she blinked
    assert not any(r.get("decision") == "spoof_suspected" for r in records), records


def test_the_door_without_a_mesh_file_says_which(tmp_path: Path, trained_model: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", trained_model, liveness={"mesh_model": str(tmp_path / "no.onnx")})
    result = run_daemon("verify", "--config", str(cfg), str(SHARED / "data/samples/obama.jpg"),
                        str(SHARED / "data/samples/obama3.jpg"))
    assert result.returncode == 1 and "cannot start: " in result.stderr and "no.onnx" in result.stderr, \
        result.stderr[-2000:]
    assert os.path.basename(str(tmp_path / "no.onnx")) in result.stderr
