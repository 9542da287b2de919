"""Verification metrics from pair scores, in numpy: ROC, AUC, EER, TAR@FAR, k-fold accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]
Labels = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Roc:
    far: Scores  # false accept rate at each threshold (descending thresholds)
    tar: Scores  # true accept rate
    thresholds: Scores


def roc(scores: Scores, same: Labels) -> Roc:
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], same[order]
    distinct = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return Roc(
        far=np.r_[0.0, fp / neg], tar=np.r_[0.0, tp / pos], thresholds=np.r_[np.inf, s[distinct]]
    )


def auc(r: Roc) -> float:
    return float(np.trapezoid(r.tar, r.far))


def eer(r: Roc) -> float:
    frr = 1.0 - r.tar
    i = int(np.argmin(np.abs(frr - r.far)))
    return float((frr[i] + r.far[i]) / 2.0)


def tar_at_far(r: Roc, far: float) -> float:
    ok = r.far <= far
    return float(r.tar[ok].max()) if ok.any() else 0.0


def threshold_at_far(r: Roc, far: float) -> float:
    """The lowest threshold whose false accept rate stays within `far`."""
    ok = np.where(r.far <= far)[0]
    return float(min(r.thresholds[ok[-1]], 1.0))  # inf (accept nothing) is 1.0 for sigmoid scores


def accuracy(scores: Scores, same: Labels, threshold: float) -> float:
    return float(np.mean((scores > threshold) == same))


def best_threshold(scores: Scores, same: Labels) -> float:
    """Threshold maximising accuracy, midway between neighbouring scores."""
    s = np.unique(scores)
    candidates = np.r_[s[0] - 1e-6, (s[:-1] + s[1:]) / 2.0] if len(s) > 1 else s
    accs = [accuracy(scores, same, t) for t in candidates]
    return float(candidates[int(np.argmax(accs))])


def kfold_accuracy(scores: Scores, same: Labels, folds: npt.NDArray[np.int64]) -> tuple[float, float]:
    """Mean and std of accuracy with the threshold picked on the other folds (LFW View 2)."""
    accs = []
    for k in np.unique(folds):
        test = folds == k
        t = best_threshold(scores[~test], same[~test])
        accs.append(accuracy(scores[test], same[test], t))
    return float(np.mean(accs)), float(np.std(accs))


def precision_recall_f1(scores: Scores, same: Labels, threshold: float) -> tuple[float, float, float]:
    pred = scores > threshold
    tp = float(np.sum(pred & same))
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float(same.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return precision, recall, f1
