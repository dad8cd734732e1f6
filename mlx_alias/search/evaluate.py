"""``mlx-alias evaluate``: the search objective for given aliases (with the natural labels and
any plain prompts, on each alias's own split) or plain prompts alone, on a category's train or
holdout images or all of them. Any scorer backend serves (MLX, or the PyTorch reference), so
an alias found in MLX can be re-scored in torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlx_alias.data.coco import Dataset
from mlx_alias.data.split import Split, split_category
from mlx_alias.tokenizer import Tokenizer

from .alias_file import Alias, AliasFile
from .phase import ids_of
from .scorer import ExactScorer

SPLITS = ("train", "holdout", "all")


@dataclass
class Row:
    category_id: int
    text: str
    tokens: list[int]
    split: str
    score: float


def check_aliases(aliases: AliasFile, dataset: Dataset) -> None:
    """Every alias's category is in the dataset."""
    for alias in aliases.result.aliases:
        if alias.category_id not in dataset.categories:
            raise ValueError(
                f"the alias file {aliases.path} names category {alias.category_id}, which the dataset lacks"
            )


def split_images(split: Split, which: str) -> list[int]:
    train = split.train_positives + split.train_negatives
    held = split.holdout_positives + split.holdout_negatives
    return {"train": train, "holdout": held, "all": sorted(train + held)}[which]


def evaluate(
    dataset: Dataset,
    tokenizer: Tokenizer,
    make_scorer: Callable[[int, list[int]], ExactScorer],
    *,
    which: str,
    aliases: list[Alias] | None = None,
    prompts: list[str] | None = None,
    categories: list[int] | None = None,
    holdout_fraction: float = 0.25,
    seed: int = 0,
) -> list[Row]:
    """One row per (category, candidate): each alias with its category's natural label and
    the ``prompts``, on the alias entry's own split (as ``search`` records it); without
    aliases, every prompt on every chosen category, on the seeded split."""
    if which not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, not {which!r}")
    if aliases is None:
        jobs = [(cid, None) for cid in (categories or sorted(dataset.categories))]
    else:
        jobs = [(a.category_id, a) for a in aliases]
    rows = []
    for category_id, entry in jobs:
        if entry is not None and entry.split is not None:
            split = entry.split
        else:
            split = split_category(dataset, category_id, holdout_fraction, seed)
        images = split_images(split, which)
        if not images:
            raise ValueError(f"category {category_id} has no {which} images (holdout fraction {holdout_fraction})")
        # (text, framed ids): an alias's own ids; text exactly as sam3 tokenizes it
        candidates: list[tuple[str, np.ndarray]] = []
        if entry is not None:
            candidates.append((tokenizer.decode(entry.tokens), ids_of(tokenizer, [entry.tokens])))
            name = dataset.categories[category_id].name
            if name:
                candidates.append((name, tokenizer(name)))
        candidates += [(p, tokenizer(p)) for p in prompts or []]
        if not candidates:
            raise ValueError("give --aliases FILE or at least one --prompt TEXT")
        scorer = make_scorer(category_id, images)
        results = scorer.exact(np.concatenate([ids for _, ids in candidates]))
        for (text, ids), result in zip(candidates, results):
            row = ids[0].tolist()
            tokens = row[1 : row.index(tokenizer.eot_id)]
            rows.append(Row(category_id, text, tokens, which, result.score))
    return rows
