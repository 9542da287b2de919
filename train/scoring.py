"""Scoring with a Keras Siamese model in numpy-sized steps (training, evaluation, export parity)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from train.data import normalise
from train.faces import FaceSet
from train.metrics import auc, best_threshold, eer, roc, tar_at_far, threshold_at_far
from train.model import arch_of, embed_for_serving, parts


def embed_numpy(model: Any, crops: npt.NDArray[np.uint8], batch: int = 256) -> npt.NDArray[np.float32]:
    embed, _ = parts(model)
    arch = arch_of(model)
    out = [np.asarray(embed_for_serving(embed, normalise(crops[i : i + batch], arch)))
           for i in range(0, len(crops), batch)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, embed.output_shape[-1]), np.float32)


def head_weights(model: Any) -> tuple[npt.NDArray[np.float32], float]:
    _, head = parts(model)
    kernel, bias = head.get_weights()
    return kernel[:, 0].astype(np.float32), float(bias[0])


def pair_scores(model: Any, ea: npt.NDArray[np.float32], eb: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    w, b = head_weights(model)
    logits = np.abs(ea - eb).astype(np.float64) @ w.astype(np.float64) + b
    return 1.0 / (1.0 + np.exp(-logits))


def validation_report(
    model: Any, faces: FaceSet, pairs: npt.NDArray[np.int64], labels: npt.NDArray[np.float32]
) -> dict[str, float]:
    emb = embed_numpy(model, faces.crops)
    scores = pair_scores(model, emb[pairs[:, 0]], emb[pairs[:, 1]])
    same = labels > 0.5
    r = roc(scores, same)
    t = best_threshold(scores, same)
    return {
        "val_accuracy": float(np.mean((scores > t) == same)),
        "val_threshold": t,
        "val_threshold_far_1e-2": threshold_at_far(r, 1e-2),
        "val_auc": auc(r),
        "val_eer": eer(r),
        "val_tar_at_far_1e-2": tar_at_far(r, 1e-2),
    }
