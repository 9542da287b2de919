"""Hard negatives for faceres' fine-tuning: each photo's highest-scoring photos of other people."""

from __future__ import annotations

import numpy as np

from train.finetune_faceres import hardest_strangers


def test_each_photo_gets_its_highest_scoring_strangers_never_itself_or_its_own_person() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 2, 3, 3, 4])
    scores = rng.normal(size=(8, 8))
    scores = (scores + scores.T) / 2
    scores[0, 1] = scores[1, 0] = 50.0  # the same person scoring highest must not count
    pairs = hardest_strangers(scores, labels, 2)
    assert pairs.shape == (16, 2)
    for i in range(8):
        mine = sorted(pairs[pairs[:, 0] == i, 1].tolist())
        others = [j for j in range(8) if labels[j] != labels[i]]
        want = sorted(sorted(others, key=lambda j: -scores[i, j])[:2])
        assert mine == want
