"""The search of one category of a run: its task (split, cached features, scorers), each alias
length's search with its checkpoint in a state folder, and the category's ``Alias``.

``category_steps`` is a generator, so that the same search runs in this process (``drain`` it)
or on a cluster worker that ships each checkpoint to the driver as it is written
(``worker.py``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from mlx_alias.data.coco import Dataset
from mlx_alias.data.split import caution, describe
from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import Tokenizer

from .alias_file import Alias, LabelScore, LengthBest
from .cache import FeatureCache
from .driver import CategorySearch, Outcome, SearchConfig, SearchStep
from .phase import ids_of
from .task import CategoryTask, category_task

log = logging.getLogger(__name__)


def state_name(category_id: int, length: int) -> str:
    """The checkpoint file of a category's search of one length, in a run's state folder."""
    return f"{category_id}-{length}.safetensors"


@dataclass(frozen=True)
class Checkpointed:
    """A step of a category's search whose checkpoint was just written to ``path``; ``finished``
    marks the last one of its length."""

    category_id: int
    length: int
    path: Path
    step: SearchStep | None  # None for a length's closing checkpoint
    finished: bool = False


def _score_texts(task_scorer, tokenizer: Tokenizer, texts: list[str]) -> list[float]:
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


def best_length(outcomes: list[Outcome]) -> int:
    """Which length's alias a search keeps: the best train score; of equals, the shortest."""
    return max(range(len(outcomes)), key=lambda i: (outcomes[i].best.score, -len(outcomes[i].best.tokens)))


def category_alias(task: CategoryTask, outcomes: list[Outcome], tokenizer: Tokenizer) -> Alias:
    best = outcomes[best_length(outcomes)].best
    baseline = None
    if task.category.name:
        name = task.category.name
        baseline = LabelScore(
            name,
            _score_texts(task.train, tokenizer, [name])[0],
            _score_texts(task.holdout, tokenizer, [name])[0] if task.holdout else None,
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


def category_steps(
    model: Sam3,
    cache: FeatureCache,
    dataset: Dataset,
    tokenizer: Tokenizer,
    cfg: SearchConfig,
    category_id: int,
    state_dir: Path,
    number: int = 1,
    count: int = 1,
    on_step: Callable[[SearchStep], None] = lambda step: None,
) -> Generator[Checkpointed, None, Alias]:
    """Search one category, each length in turn, resuming any length whose checkpoint
    ``state_dir`` holds; yields after every checkpoint written there and returns the alias.
    ``number`` of ``count`` is the category's place in its run (for progress)."""
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
    log.info("%s (%d of %d): %s", task.category.label, number, count, describe(task.split))
    if warning := caution(task.split):
        log.warning("%s: %s", task.category.label, warning)

    def numbered(step: SearchStep) -> None:
        on_step(dataclasses.replace(step, number=number, count=count))

    outcomes = []
    for length in cfg.lengths:
        path = state_dir / state_name(category_id, length)
        search = CategorySearch(task, model, tokenizer, cfg, length, path, numbered)
        steps = search.steps()
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                outcomes.append(stop.value)
                break
            yield Checkpointed(category_id, length, path, dataclasses.replace(step, number=number, count=count))
        if path.is_file():
            yield Checkpointed(category_id, length, path, None, finished=True)
    return category_alias(task, outcomes, tokenizer)
