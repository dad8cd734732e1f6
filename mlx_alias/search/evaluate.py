"""``mlx-alias evaluate``: the search objective for given aliases (with the natural labels) or
plain prompts, on a category's train or holdout images or all of them. Any scorer backend
serves (MLX, or the PyTorch reference), so an alias found in MLX can be re-scored in torch."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlx_alias.data.coco import Dataset
from mlx_alias.data.split import Split, split_category
from mlx_alias.tokenizer import Tokenizer

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


def read_aliases(path: Path, dataset: Dataset, tokenizer: Tokenizer) -> list[dict]:
    """``aliases.json`` as ``search`` writes it, checked against the dataset and vocabulary."""
    try:
        entries = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the alias file {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"the alias file {path} is not JSON (line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "category_id" in e and "tokens" in e for e in entries):
        raise ValueError(f"the alias file {path} is not a list of entries with category_id and tokens")
    for e in entries:
        if e["category_id"] not in dataset.categories:
            raise ValueError(f"the alias file {path} names category {e['category_id']}, which the dataset lacks")
        try:
            tokenizer.from_content_ids(e["tokens"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the alias of category {e['category_id']} does not fit these weights' vocabulary: {exc}") from exc
    return entries


def split_images(split: Split, which: str) -> list[int]:
    train = split.train_positives + split.train_negatives
    held = split.holdout_positives + split.holdout_negatives
    return {"train": train, "holdout": held, "all": sorted(train + held)}[which]


def evaluate(dataset: Dataset, tokenizer: Tokenizer, make_scorer: Callable[[int, list[int]], ExactScorer], *,
             which: str, aliases: list[dict] | None = None, prompts: list[str] | None = None,
             categories: list[int] | None = None, holdout_fraction: float = 0.25, seed: int = 0) -> list[Row]:
    """One row per (category, candidate): the aliases with their categories' natural labels,
    or every prompt on every chosen category. An alias entry's own split is used when it has
    one (as ``search`` records it), else the seeded split."""
    if which not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, not {which!r}")
    if aliases is None:
        jobs = [(cid, None) for cid in (categories or sorted(dataset.categories))]
    else:
        jobs = [(e["category_id"], e) for e in aliases]
    rows = []
    for category_id, entry in jobs:
        if entry is not None and "split" in entry:
            split = Split(**entry["split"])
        else:
            split = split_category(dataset, category_id, holdout_fraction, seed)
        images = split_images(split, which)
        if not images:
            raise ValueError(f"category {category_id} has no {which} images (holdout fraction {holdout_fraction})")
        # (text, framed ids): an alias's own ids; text exactly as sam3 tokenizes it
        candidates: list[tuple[str, np.ndarray]] = []
        if entry is not None:
            candidates.append((tokenizer.decode(entry["tokens"]), ids_of(tokenizer, [tuple(entry["tokens"])])))
            name = dataset.categories[category_id].name
            if name:
                candidates.append((name, tokenizer(name)))
        else:
            candidates = [(p, tokenizer(p)) for p in prompts or []]
        if not candidates:
            raise ValueError("give --aliases FILE or at least one --prompt TEXT")
        scorer = make_scorer(category_id, images)
        results = scorer.exact(np.concatenate([ids for _, ids in candidates]))
        for (text, ids), result in zip(candidates, results):
            row = ids[0].tolist()
            tokens = row[1: row.index(tokenizer.eot_id)]
            rows.append(Row(category_id, text, tokens, which, result.score))
    return rows
