"""A search run over the categories of a dataset: the run folder (``run_folder.py``: lock,
start, resume), the search of each category, and the results.

``aliases.json`` (``alias_file.py``) stands alone: it records, beside the aliases, all that
re-scoring or applying them needs. It is rewritten atomically after each finished category. A
killed run resumes with ``--resume`` from its last step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from mlx_alias.data.coco import Dataset, DatasetError
from mlx_alias.data.fingerprint import fingerprint_dataset
from mlx_alias.data.split import caution, describe
from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import load_tokenizer

from .alias_file import ALIASES_FORMAT, Alias, LabelScore, LengthBest, SearchResult, Skipped
from .batching import pairs_for
from .cache import FeatureCache
from .driver import SearchConfig, SearchStep, search_category
from .phase import ids_of
from .report import write_report
from .run_folder import ALIASES, STATE, RunError, claim, recorded_path, write_json
from .task import category_task

log = logging.getLogger(__name__)


def choose_categories(dataset: Dataset, categories: list[int] | None) -> tuple[list[int], list[Skipped]]:
    """(the categories to search, those skipped with the reason). Named categories must each
    have an instance to learn from (repeats are searched once); of all categories, those with
    none are skipped."""
    if categories is not None:
        if not categories:
            raise RunError("--categories names no category id")
        for category_id in categories:
            dataset.check_category(category_id)
        return list(dict.fromkeys(categories)), []
    chosen, skipped = [], []
    for category_id in sorted(dataset.categories):
        try:
            dataset.check_category(category_id)
            chosen.append(category_id)
        except DatasetError:
            skipped.append(
                Skipped(
                    category_id,
                    dataset.categories[category_id].name,
                    "it has no instances to learn from (no annotations, or only crowd regions)",
                )
            )
    if not chosen:
        raise RunError("no category of the dataset has an instance to learn from")
    return chosen, skipped


def _with_batch(
    cfg: SearchConfig, model: Sam3, cache: FeatureCache, dataset: Dataset, recorded: dict | None
) -> SearchConfig:
    """``pairs_per_batch`` 0 means as many pairs as fit in free memory: measured on the dataset's
    first image, or, on resume, the number the run started with (racing's rounds follow the
    batch, so the same number keeps a resumed search on its course)."""
    if cfg.pairs_per_batch:
        return cfg
    started = (recorded or {}).get("search", {}).get("pairs_per_batch")
    if started:
        return dataclasses.replace(cfg, pairs_per_batch=started)
    pairs = pairs_for(model, cache, dataset)
    log.info("%d (candidate, image) pairs per grounding call (measured to fit in half the free memory)", pairs)
    return dataclasses.replace(cfg, pairs_per_batch=pairs)


def score_texts(task_scorer, tokenizer, texts: list[str]) -> list[float]:
    return [r.score for r in task_scorer.exact(tokenizer(texts))]


def _joined_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The lengths' score curves one after another: (evaluations spent in all, best so far)."""
    joined, spent, best = [], 0, -float("inf")
    for curve in curves:
        for evaluations, score in curve:
            best = max(best, score)
            joined.append((spent + evaluations, best))
        spent += curve[-1][0]
    return joined


def _finished(document: dict | None, path: Path) -> list[Alias]:
    if document is None:
        return []
    try:
        if document.get("format") != ALIASES_FORMAT:
            raise ValueError
        return SearchResult.from_json(document).aliases
    except (AttributeError, KeyError, TypeError, ValueError):
        raise RunError(
            f"{path} is not this run's alias file; remove it to redo the run's finished categories"
        ) from None


def _alias(task, outcomes, tokenizer) -> Alias:
    # the best train score; of equals, the shortest alias
    best = max((o.best for o in outcomes), key=lambda c: (c.score, -len(c.tokens)))
    baseline = None
    if task.category.name:
        name = task.category.name
        baseline = LabelScore(
            name,
            score_texts(task.train, tokenizer, [name])[0],
            score_texts(task.holdout, tokenizer, [name])[0] if task.holdout else None,
        )
    return Alias(
        category_id=task.category.id,
        tokens=best.tokens,
        name=task.category.name,
        text=tokenizer.decode(best.tokens),
        roundtrip=tokenizer.roundtrips(best.tokens),
        train_score=best.score,
        holdout_score=task.holdout.exact(ids_of(tokenizer, [best.tokens]))[0].score if task.holdout else None,
        baseline=baseline,
        evaluations=sum(o.evaluations for o in outcomes),
        split=task.split,
        curve=tuple(_joined_curve([o.curve for o in outcomes])),
        lengths=tuple(
            LengthBest(
                len(o.best.tokens),
                o.best.tokens,
                tokenizer.decode(o.best.tokens),
                o.best.score,
                o.evaluations,
                None
                if o.surrogate is None
                else {"score": o.surrogate.temperature, "mask": o.surrogate.mask_temperature},
            )
            for o in outcomes
        ),
    )


def _numbered(on_step: Callable[[SearchStep], None], number: int, count: int, step: SearchStep) -> None:
    on_step(dataclasses.replace(step, number=number, count=count))


def run_search(
    model: Sam3,
    cache: FeatureCache,
    dataset: Dataset,
    run_dir: Path,
    cfg: SearchConfig,
    categories: list[int] | None = None,
    resume: bool = False,
    on_step: Callable[[SearchStep], None] = lambda step: None,
) -> SearchResult:
    """Search each category (all that have instances when ``categories`` is None) into
    ``run_dir``, or resume the run there; returns what ``aliases.json`` holds. Messages go to the
    ``mlx_alias`` logger; ``on_step`` receives every search step (``SearchStep``)."""
    tokenizer = load_tokenizer()
    chosen, skipped = choose_categories(dataset, categories)
    for item in skipped:
        log.info("%s: skipped, %s", dataset.categories[item.category_id].label, item.reason)
    data_print = fingerprint_dataset(dataset)
    with claim(run_dir, resume=resume) as folder:
        recorded = folder.recorded() if resume else None
        if resume and recorded is None:
            raise RunError(f"{run_dir} holds no run to resume (run.json is missing)")
        cfg = _with_batch(cfg, model, cache, dataset, recorded)
        settings = {
            "search": json.loads(json.dumps(dataclasses.asdict(cfg))),
            "categories": chosen,
            "weights": {"sha256": cache.fingerprint, "path": recorded_path(cache.weights_dir, run_dir)},
            "dataset": {"path": recorded_path(dataset.annotation_file, run_dir), **data_print.summary()},
        }
        if resume:
            entries = _finished(folder.resume(settings, data_print), run_dir / ALIASES)
        else:
            folder.start(settings, data_print)
            entries = []
        finished = {a.category_id for a in entries}
        result = SearchResult(
            entries, skipped, cfg.objective, cfg.holdout_fraction, cfg.seed, settings["weights"], settings["dataset"]
        )
        for number, category_id in enumerate(chosen, start=1):
            if category_id in finished:
                continue
            task = category_task(
                model,
                cache,
                dataset,
                category_id,
                holdout_fraction=cfg.holdout_fraction,
                seed=cfg.seed,
                config=cfg.objective,
                pairs_per_batch=cfg.pairs_per_batch,
            )
            log.info("%s (%d of %d): %s", task.category.label, number, len(chosen), describe(task.split))
            if warning := caution(task.split):
                log.warning("%s: %s", task.category.label, warning)
            states = [run_dir / STATE / f"{category_id}-{length}.safetensors" for length in cfg.lengths]
            numbered = functools.partial(_numbered, on_step, number, len(chosen))
            outcomes = [
                search_category(task, model, tokenizer, cfg, length, state, numbered)
                for length, state in zip(cfg.lengths, states)
            ]
            result.aliases.append(_alias(task, outcomes, tokenizer))
            write_json(run_dir / ALIASES, result.to_json())
            for state in states:
                state.unlink(missing_ok=True)
            mx.clear_cache()
        write_json(run_dir / ALIASES, result.to_json())
        write_report(model, dataset, result, run_dir)
    return result
