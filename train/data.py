"""Balanced pair sampling, hard-negative mining and the tf.data input pipeline."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from train.faces import FaceSet
from train.model import ARCHITECTURES


class DisjointnessError(ValueError):
    """Training data shares a person with the evaluation pair list."""


def check_disjoint(train_people: Iterable[str], eval_people: frozenset[str], eval_name: str) -> None:
    overlap = sorted(set(train_people) & eval_people)
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise DisjointnessError(
            f"training data holds {len(overlap)} people named in {eval_name} ({shown}); "
            "a model must not be evaluated on people it was trained on (use --exclude-pairs)"
        )


@dataclass
class PairSampler:
    """Draws balanced positive/negative pairs; negatives the model scored high are drawn more."""

    faces: FaceSet
    seed: int = 0

    def __post_init__(self) -> None:
        by_person: dict[str, list[int]] = defaultdict(list)
        for i, person in enumerate(self.faces.people):
            by_person[person].append(i)
        self.multi = [np.asarray(v) for v in by_person.values() if len(v) >= 2]
        if not self.multi:
            raise ValueError("training needs at least one person with two or more photos")
        self.labels = np.asarray([hash(p) for p in self.faces.people])
        self.rng = np.random.default_rng(self.seed)
        self.hard: npt.NDArray[np.int64] = np.zeros((0, 2), np.int64)

    def positives(self, n: int) -> npt.NDArray[np.int64]:
        weights = np.asarray([len(v) for v in self.multi], np.float64)
        who = self.rng.choice(len(self.multi), size=n, p=weights / weights.sum())
        out = np.empty((n, 2), np.int64)
        for k, w in enumerate(who):
            out[k] = self.rng.choice(self.multi[w], size=2, replace=False)
        return out

    def negatives(self, n: int) -> npt.NDArray[np.int64]:
        out = self.rng.integers(0, len(self.faces), size=(n * 2, 2))
        out = out[self.labels[out[:, 0]] != self.labels[out[:, 1]]]
        return out[:n]

    def epoch(self, n_pairs: int, hard_fraction: float = 0.5) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        n_pos = n_pairs // 2
        n_neg = n_pairs - n_pos
        n_hard = min(len(self.hard), int(n_neg * hard_fraction))
        hard = self.hard[self.rng.choice(len(self.hard), n_hard, replace=False)] if n_hard else self.hard[:0]
        pairs = np.concatenate([self.positives(n_pos), self.negatives(n_neg - n_hard), hard])
        labels = np.concatenate([np.ones(n_pos, np.float32), np.zeros(n_neg, np.float32)])
        order = self.rng.permutation(len(pairs))
        return pairs[order], labels[order]

    def mine(self, score_fn: Any, pool: int = 20000, keep: int = 4000) -> float:
        """Score a pool of random negatives and keep the highest-scoring (hardest) ones."""
        candidates = self.negatives(pool)
        scores = score_fn(candidates)
        hardest = np.argsort(-scores)[:keep]
        self.hard = candidates[hardest]
        return float(np.mean(scores[hardest] > 0.5))


def make_dataset(
    faces: FaceSet,
    pairs: npt.NDArray[np.int64],
    labels: npt.NDArray[np.float32],
    batch_size: int,
    augment: bool,
    crops_tensor: Any = None,
    seed: int = 0,
    arch: str = "compact",
) -> Any:
    """tf.data pipeline of ({anchor, other}, {score, emb_a, emb_b, distance}) batches."""
    import tensorflow as tf

    crops = crops_tensor if crops_tensor is not None else tf.constant(faces.crops)
    teacher = tf.constant(faces.teacher) if faces.teacher is not None else None
    mean = tf.constant(ARCHITECTURES[arch].mean, tf.float32)
    std = tf.constant(ARCHITECTURES[arch].std, tf.float32)

    def augment_one(img: Any) -> Any:
        img = tf.image.random_flip_left_right(img)
        img = tf.image.random_brightness(img, 0.15)
        img = tf.image.random_contrast(img, 0.8, 1.2)
        # Small shift/scale/rotation: a projective transform around the centre.
        size = tf.cast(tf.shape(img)[0], tf.float32)
        angle = tf.random.uniform([], -0.12, 0.12)
        scale = tf.random.uniform([], 0.92, 1.08)
        tx, ty = tf.unstack(tf.random.uniform([2], -0.05, 0.05) * size)
        c, s = tf.cos(angle) / scale, tf.sin(angle) / scale
        cx = size / 2.0
        transform = tf.stack(
            [c, -s, cx - c * cx + s * cx + tx, s, c, cx - s * cx - c * cx + ty, 0.0, 0.0]
        )
        img = tf.raw_ops.ImageProjectiveTransformV3(
            images=img[None], transforms=transform[None], output_shape=tf.shape(img)[:2],
            interpolation="BILINEAR", fill_mode="REFLECT", fill_value=0.0,
        )[0]
        return tf.clip_by_value(img, 0.0, 1.0)

    def load(pair: Any, label: Any) -> Any:
        imgs = []
        for k in range(2):
            img = tf.cast(tf.gather(crops, pair[k]), tf.float32) / 255.0
            if augment:
                img = augment_one(img)
            imgs.append((img * 255.0 - mean) / std)
        targets = {"score": label[None], "distance": label[None]}
        if teacher is not None:
            targets["emb_a"] = tf.gather(teacher, pair[0])
            targets["emb_b"] = tf.gather(teacher, pair[1])
        else:
            # Keras wants a target per output; without a teacher these carry no loss.
            targets["emb_a"] = targets["emb_b"] = tf.zeros([1])
        return {"anchor": imgs[0], "other": imgs[1]}, targets

    ds = tf.data.Dataset.from_tensor_slices((pairs, labels))
    if augment:
        ds = ds.shuffle(len(pairs), seed=seed)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def normalise(crops: npt.NDArray[np.uint8], arch: str = "compact") -> npt.NDArray[np.float32]:
    """The same normalisation as the pipeline above, in numpy (evaluation, parity)."""
    mean = np.asarray(ARCHITECTURES[arch].mean, np.float32)
    std = np.asarray(ARCHITECTURES[arch].std, np.float32)
    return ((crops.astype(np.float32) - mean) / std).astype(np.float32)
