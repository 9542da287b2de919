"""The model run shared by the doors that have faces at the same moment."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from accessd.batcher import Batcher, BatcherClosed
from accessd.model import FaceCrops, Scored
from accessd.types import Floats


def crops(value: int, n: int) -> list[FaceCrops]:
    return [(np.full((2, 2, 3), value, np.uint8),) for _ in range(n)]


def test_waiting_doors_share_one_run_and_each_gets_its_own_rows() -> None:
    runs: list[int] = []
    started, release = threading.Event(), threading.Event()

    def run(faces: list[FaceCrops], targets: Floats) -> Scored:
        started.set()
        release.wait(5)  # the first run is slow: the others queue up meanwhile
        runs.append(len(faces))
        values = np.asarray([[float(f[0][0, 0, 0])] for f in faces], np.float32)
        return Scored(values, np.asarray([[v[0], *targets[0]] for v in values], np.float32), values * 10)

    batcher = Batcher(run)
    targets = np.asarray([[7.0]], np.float32)
    results: dict[int, Scored] = {}

    def door(value: int, n: int) -> None:
        results[value] = batcher.score(crops(value, n), targets)

    threads = [threading.Thread(target=door, args=(v, n)) for v, n in ((1, 1), (2, 2), (3, 3))]
    threads[0].start()
    assert started.wait(5)  # the first door's faces are in the model
    for t in threads[1:]:
        t.start()
    threading.Event().wait(0.3)
    release.set()
    for t in threads:
        t.join(5)
    batcher.close()
    # The first door alone, then the two that waited in one run; each its own faces' rows.
    assert sorted(runs) == [1, 5] and batcher.runs == 2 and batcher.served == 3
    for value, n in ((1, 1), (2, 2), (3, 3)):
        scored = results[value]
        assert scored.scores.shape == (n, 2) and np.all(scored.scores[:, 0] == value)
        assert np.all(scored.scores[:, 1] == 7.0)
        # Every part of a run is cut to the door's own faces: embeddings and cohort statistics too.
        assert np.all(scored.embeddings == value) and scored.cohort is not None and np.all(scored.cohort == 10 * value)


def test_a_failed_run_fails_every_door_in_it_and_a_closed_batcher_refuses() -> None:
    def run(_faces: list[FaceCrops], _targets: Floats) -> Scored:
        raise RuntimeError("model failed")

    batcher = Batcher(run)
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.score(crops(1, 1), np.zeros((1, 1), np.float32))
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.score(crops(1, 1), np.zeros((1, 1), np.float32))
