"""Write a Keras checkpoint of the `resnet` Siamese model holding dlib's pretrained weights.

    python -m train.import_dlib --out runs/resnet-dlib \\
        [--dat .../dlib_face_recognition_resnet_model_v1.dat]

The weights are read by the project's own reader (`train.dlib_dat`): dlib is
not needed. `--dat` defaults to the file in PyPI `face-recognition-models`
(CC0). The head starts as dlib's own rule in the Siamese form: a pair matches
when its descriptors are closer than dlib's threshold (0.6 Euclidean), which
on an L1 distance is a uniform negative weight and a bias at the equivalent L1
distance (`L1_PER_L2`). Training (`train.finetune`) goes on from here.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from train.dlib_dat import DlibNet, Layer, read_dat

log = logging.getLogger("import_dlib")

# L1 / L2 distance between dlib descriptors of two different people: 9.05 on
# average (median 9.05, 5-95 % 8.69-9.38; 9.05 too for pairs near dlib's 0.6)
# over 20,000 pairs from 3,000 LFW chips of people outside pairsDevTest. The
# L1 rule below agrees with dlib's L2 rule on 99.8 % of those pairs.
L1_PER_L2 = 9.05
# Logit per unit of L1 distance: scores go from ~0.95 for a typical genuine
# pair to ~0.1 for a typical impostor pair, with 0.5 at dlib's threshold.
HEAD_SLOPE = 1.0


def default_dat() -> Path:
    try:
        import face_recognition_models
    except ImportError as exc:
        raise SystemExit("pass --dat, or `pip install -r requirements-train.txt` for face-recognition-models") from exc
    return Path(face_recognition_models.face_recognition_model_location())


def resnet_layer_names() -> list[str]:
    """The Keras layers that hold weights, in dlib's forward order."""
    from train.model import RESNET_STAGES

    names = ["stem_conv", "stem_affine"]
    for s, (_, blocks, _) in enumerate(RESNET_STAGES):
        for b in range(blocks):
            p = f"stage{s}_block{b}"
            names += [f"{p}_conv1", f"{p}_affine1", f"{p}_conv2", f"{p}_affine2"]
    return [*names, "embedding"]


def _weights(layer: Layer) -> list[np.ndarray]:
    f = layer.fields
    if layer.tag == "con":
        n, k, kh, kw = f["num_filters"], f["k"], f["nr"], f["nc"]
        filters = layer.params[: n * k * kh * kw].reshape(n, k, kh, kw)  # OIHW, cross-correlation
        return [filters.transpose(2, 3, 1, 0), layer.params[n * k * kh * kw :]]
    if layer.tag == "affine":
        c = f["channels"]
        return [layer.params[:c], layer.params[c:]]
    if layer.tag == "fc":
        if f["bias_mode"] != 1:
            raise ValueError("dlib fc layer with a bias: not the face-recognition ResNet")
        return [layer.params.reshape(f["num_inputs"], f["num_outputs"])]
    raise ValueError(f"layer {layer.tag} holds no weights")


def load_into(embed: Any, net: DlibNet) -> None:
    """Copy dlib's weights into the Keras `resnet` embedding network, layer by layer."""
    weighted = [layer for layer in net.layers if layer.tag in ("con", "affine", "fc")]
    names = resnet_layer_names()
    if len(weighted) != len(names):
        raise ValueError(f"the file has {len(weighted)} weighted layers; the resnet architecture has {len(names)}")
    for name, layer in zip(names, weighted, strict=True):
        target = embed.get_layer(name)
        values = _weights(layer)
        shapes = [tuple(w.shape) for w in target.get_weights()]
        if shapes != [v.shape for v in values]:
            raise ValueError(f"{name}: file has {[v.shape for v in values]}, model expects {shapes}")
        target.set_weights(values)


def build_from_dlib(dat: Path) -> tuple[Any, DlibNet]:
    """The Siamese `resnet` model with dlib's twin and a head that applies dlib's distance rule."""
    import keras

    from train.model import DLIB_MEAN, build_siamese, parts

    net = read_dat(dat)
    if net.input_size != (150, 150) or not np.allclose(net.input_mean, DLIB_MEAN, atol=1e-5):
        raise ValueError(f"{dat}: input {net.input_size} mean {net.input_mean}, expected 150x150 and {DLIB_MEAN}")
    keras.utils.set_random_seed(0)
    model = build_siamese("resnet")
    embed, head = parts(model)
    load_into(embed, net)
    dim = int(embed.output_shape[-1])
    t1 = net.dist_thresh * L1_PER_L2
    head.set_weights([np.full((dim, 1), -HEAD_SLOPE, np.float32), np.array([HEAD_SLOPE * t1], np.float32)])
    return model, net


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dat", type=Path, default=None, help="dlib_face_recognition_resnet_model_v1.dat")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.keras and state.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dat = args.dat or default_dat()
    model, net = build_from_dlib(dat)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "checkpoint.tmp.keras"
    model.save(tmp)
    tmp.replace(args.out / "checkpoint.keras")
    state = {"epoch": 0, "arch": "resnet", "stage": "imported", "source": f"dlib {dat.name}",
             "dlib_dist_thresh": net.dist_thresh, "validation": {}}
    (args.out / "state.json").write_text(json.dumps(state, indent=2))
    log.info("dlib's %s -> %s (%d layers)", dat.name, args.out / "checkpoint.keras", len(net.layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
