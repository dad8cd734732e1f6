"""One category of a dataset made ready to score prompts on: its seeded train/holdout split,
cached image features and targets at the model's mask resolution, one scorer per split."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_alias.data.coco import Category, Dataset
from mlx_alias.data.split import Split, split_category
from mlx_alias.model.sam3 import Sam3

from .cache import FeatureCache
from .objective import ObjectiveConfig, prepare_target
from .scorer import Scorer


@dataclass
class CategoryTask:
    category: Category
    split: Split
    train: Scorer
    holdout: Scorer | None  # None when the holdout fraction is 0


def scorer_for(
    model: Sam3,
    cache: FeatureCache,
    dataset: Dataset,
    category_id: int,
    image_ids: list[int],
    config: ObjectiveConfig,
    pairs_per_batch: int,
) -> Scorer:
    features = cache.get([dataset.images[i].path for i in image_ids])
    size = features.levels[0].shape[1]
    targets = []
    for image_id in image_ids:
        target = dataset.targets(image_id, category_id)
        targets.append(prepare_target(target.masks, target.crowd, size))
    return Scorer(model, features, targets, config, pairs_per_batch)


def category_task(
    model: Sam3,
    cache: FeatureCache,
    dataset: Dataset,
    category_id: int,
    *,
    holdout_fraction: float,
    seed: int,
    config: ObjectiveConfig = ObjectiveConfig(),
    pairs_per_batch: int = 8,
) -> CategoryTask:
    split = split_category(dataset, category_id, holdout_fraction, seed)
    train = scorer_for(
        model, cache, dataset, category_id, split.train_positives + split.train_negatives, config, pairs_per_batch
    )
    held = split.holdout_positives + split.holdout_negatives
    holdout = scorer_for(model, cache, dataset, category_id, held, config, pairs_per_batch) if held else None
    return CategoryTask(dataset.categories[category_id], split, train, holdout)
