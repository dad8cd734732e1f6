"""A category's images split into the ones the search learns from and the ones it is judged on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coco import Dataset


@dataclass(frozen=True)
class Split:
    train_positives: list[int]  # image ids, each list sorted
    train_negatives: list[int]
    holdout_positives: list[int]
    holdout_negatives: list[int]


def split_category(dataset: Dataset, category_id: int, holdout_fraction: float, seed: int) -> Split:
    """Hold out ``round(holdout_fraction * count)`` of the positives and, separately, of the
    negatives, with Python's ``round`` (halves to even). The positives keep at least one for
    training, and give at least one to the holdout when there are two or more and the fraction
    is not 0. The result depends only on the seed, the category id and the image ids.
    """
    if not 0 <= holdout_fraction < 1:  # also rejects NaN
        raise ValueError(f"the holdout fraction must be at least 0 and below 1, got {holdout_fraction}")
    dataset.check_category(category_id)
    positives, negatives = dataset.positives(category_id), dataset.negatives(category_id)
    n_pos = round(holdout_fraction * len(positives))
    if holdout_fraction > 0 and len(positives) >= 2:
        n_pos = max(n_pos, 1)
    n_pos = min(n_pos, len(positives) - 1)
    # SeedSequence takes non-negative integers; % 2**64 keeps negative seeds and ids usable.
    rng = np.random.default_rng([int(seed) % 2**64, int(category_id) % 2**64])
    train_pos, holdout_pos = _take(positives, n_pos, rng)
    train_neg, holdout_neg = _take(negatives, round(holdout_fraction * len(negatives)), rng)
    return Split(train_pos, train_neg, holdout_pos, holdout_neg)


def _take(ids: list[int], count: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(the rest, ``count`` ids drawn at random), both sorted; ``ids`` must be sorted."""
    chosen = set(rng.permutation(len(ids))[:count].tolist())
    rest = [i for n, i in enumerate(ids) if n not in chosen]
    return rest, [i for n, i in enumerate(ids) if n in chosen]


def describe(split: Split) -> str:
    """One line, e.g. ``train 7 positive / 3 negative images, holdout 2 / 1``."""
    return (
        f"train {len(split.train_positives)} positive / {len(split.train_negatives)} negative images, "
        f"holdout {len(split.holdout_positives)} / {len(split.holdout_negatives)}"
    )


def caution(split: Split) -> str | None:
    """A warning when no training image is a negative: the search then never sees a false
    positive, and such searches give most of the aliases that predict on unseen negatives
    (docs/method.md, "Data")."""
    if split.train_negatives:
        return None
    return (
        "no training image is without the concept, so the search cannot see false positives and the "
        "alias may predict it on images that lack it; add such images to the dataset"
    )
