"""Convert MediaPipe's 468-point face mesh (TFLite) to the ONNX model the door's liveness checks run.

    python export/face_mesh_to_onnx.py [--tflite models/detector/face_landmark.tflite] \\
        [--out models/face_mesh.onnx]

The `.tflite` comes from the `mediapipe==0.10.21` wheel through
`python -m accessd.provision` (pinned sha256), like the detectors. tf2onnx
converts it; the conversion is refused unless ONNX Runtime and the TFLite
interpreter agree on real face crops (the shared clip's frames and LFW photos,
cropped by the door's own rule) within PARITY_PX pixels of the 192 px crop.
The contract the door relies on (input, outputs, crop rule, source and its
hash, measured parity) goes into the ONNX metadata under `accessd.face_mesh`;
`accessd/landmarks.py` refuses a model without it. The output is committed,
so a door never needs TensorFlow or tf2onnx.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("export.face_mesh")

PARITY_PX = 0.01  # landmark coordinates, in pixels of the 192 x 192 crop


def real_crops(limit: int = 24) -> np.ndarray:
    """192 x 192 crops made by the door's own detect -> crop rule, from real faces in ../shared."""
    import cv2

    from accessd.bench import shared_dir
    from accessd.detector import FaceDetector
    from accessd.imageio import read_image, to_rgb
    from accessd.landmarks import mesh_crop
    from accessd.provision import model_path

    repo = Path(__file__).resolve().parent.parent
    images = []
    cap = cv2.VideoCapture(str(shared_dir() / "data/video/webcam_face.mp4"))
    for i in range(0, 383, 32):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        if ok:
            images.append(to_rgb(frame))
    cap.release()
    images += [read_image(p) for p in sorted((shared_dir() / "data/lfw").glob("A*/*_0001.jpg"))[:12]]
    crops = []
    with FaceDetector(model_path(repo / "models/detector", "full_range"), 0.5) as det:
        for image in images:
            faces = det.detect(image)
            if faces:
                crops.append(mesh_crop(image, max(faces, key=lambda f: f.area))[0])
    return np.stack(crops[:limit])


def batched(model: object) -> None:
    """Let the graph take N faces at once: tf2onnx fixes the batch at 1 in the inputs, the outputs
    and the two final Reshapes' shape constants (checked below: batch and one-by-one agree exactly)."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] in constants:
            shape = numpy_helper.to_array(constants[node.input[1]]).copy()
            if shape[0] == 1:
                shape[0] = -1
                constants[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"


def tflite_outputs(tflite: Path, crops: np.ndarray) -> list[np.ndarray]:
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(tflite))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outs = sorted(interp.get_output_details(), key=lambda d: d["name"])
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for crop in crops:
        interp.set_tensor(inp["index"], (crop[None].astype(np.float32) / 255.0))
        interp.invoke()
        for k, d in enumerate(outs):
            results[k].append(interp.get_tensor(d["index"]).reshape(-1).copy())
    return [np.stack(r) for r in results]


def main(argv: list[str] | None = None) -> int:
    from accessd.landmarks import CONTRACT_KEY, INPUT, LANDMARKS, PRESENCE, SIZE
    from accessd.provision import MODELS, sha256_file

    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tflite", type=Path, default=repo / "models/detector/face_landmark.tflite")
    p.add_argument("--out", type=Path, default=repo / "models/face_mesh.onnx")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    expected = MODELS["face_landmark"].sha256
    if sha256_file(args.tflite) != expected:
        log.error("%s: sha256 is not the pinned %s (run python -m accessd.provision)", args.tflite, expected)
        return 1

    import onnx
    import onnxruntime as ort
    import tf2onnx

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "mesh.onnx"
        tf2onnx.convert.from_tflite(str(args.tflite), opset=15, output_path=str(raw))
        model = onnx.load(str(raw))
    batched(model)
    names_in = [i.name for i in model.graph.input]
    names_out = sorted(o.name for o in model.graph.output)
    if names_in != [INPUT] or names_out != sorted([LANDMARKS, PRESENCE]):
        log.error("unexpected graph: inputs %s, outputs %s", names_in, names_out)
        return 1
    crops = real_crops()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = session.run([LANDMARKS, PRESENCE], {INPUT: crops.astype(np.float32) / 255.0})
    theirs = dict(zip(sorted([LANDMARKS, PRESENCE]), tflite_outputs(args.tflite, crops), strict=True))
    diff_px = float(np.abs(ours[0].reshape(len(crops), -1) - theirs[LANDMARKS]).max())
    diff_logit = float(np.abs(ours[1].reshape(len(crops), -1) - theirs[PRESENCE]).max())
    one_by_one = np.concatenate([session.run([LANDMARKS], {INPUT: c[None].astype(np.float32) / 255.0})[0]
                                 for c in crops])
    diff_batch = float(np.abs(one_by_one - ours[0]).max())
    log.info("parity on %d real crops: landmarks %.2e px, presence logit %.2e; batch vs one by one %.2e",
             len(crops), diff_px, diff_logit, diff_batch)
    diff_px = max(diff_px, diff_batch)
    if diff_px > PARITY_PX or diff_logit > PARITY_PX:
        log.error("ONNX Runtime and TFLite disagree beyond %.3g; nothing written", PARITY_PX)
        return 1
    contract = {
        "source": "mediapipe==0.10.21 wheel, mediapipe/modules/face_landmark/face_landmark.tflite (Apache-2.0)",
        "tflite_sha256": expected,
        "converter": f"tf2onnx {tf2onnx.__version__}, opset 15",
        "input": {"name": INPUT, "size": SIZE, "color_order": "RGB", "range": [0.0, 1.0], "layout": "NHWC"},
        "crop": "square around the detector's box centre, side 1.5 x the larger box side, eyes level",
        "outputs": {"landmarks": LANDMARKS, "presence_logit": PRESENCE, "points": 468,
                    "units": "pixels of the 192 x 192 crop (x, y, z)"},
        "parity": {"crops": len(crops), "max_abs_landmarks_px": diff_px, "max_abs_presence_logit": diff_logit},
    }
    onnx.helper.set_model_props(model, {CONTRACT_KEY: json.dumps(contract)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    log.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
