"""A search run over the categories of a dataset: the run folder (``run_folder.py``: lock,
start, resume), the search of each category, and the results.

``aliases.json`` (``alias_file.py``) stands alone: it records, beside the aliases, all that
re-scoring or applying them needs. It is rewritten atomically after each finished category. A
killed run resumes with ``--resume`` from its last step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import mlx.core as mx

from mlx_alias.data.coco import Dataset, DatasetError
from mlx_alias.data.fingerprint import fingerprint_dataset
from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import load_tokenizer

from .alias_file import ALIASES_FORMAT, Alias, SearchResult, Skipped
from .batching import pairs_for
from .cache import FeatureCache
from .category import category_steps, state_name
from .cluster import ClusterConfig, search_on_cluster
from .driver import SearchConfig, SearchStep, drain
from .report import write_report
from .run_folder import ALIASES, STATE, RunError, claim, recorded_path, write_json
from .worker import WorkerJob, portable

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


def _worker_job(model: Sam3, cache: FeatureCache, dataset: Dataset, settings: dict) -> WorkerJob:
    return WorkerJob(
        weights=portable(cache.weights_dir),
        dtype=str(model.dtype).removeprefix("mlx.core."),
        annotations=portable(dataset.annotation_file),
        images=portable(dataset.image_root),
        cache=portable(cache.directory),
        weights_sha256=settings["weights"]["sha256"],
        dataset={k: v for k, v in settings["dataset"].items() if k != "path"},
        threads=1,  # each node's share of its CPUs replaces it (cluster._start_workers)
    )


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


def _search_here(
    model: Sam3,
    cache: FeatureCache,
    dataset: Dataset,
    cfg: SearchConfig,
    todo: list[tuple[int, int]],
    count: int,
    state_dir: Path,
    on_step: Callable[[SearchStep], None],
) -> Iterator[Alias]:
    """Search the categories ``todo`` ((place in the run, category id)) in this process, one
    after another; yields each alias."""
    tokenizer = load_tokenizer()
    for number, category_id in todo:
        yield drain(
            category_steps(model, cache, dataset, tokenizer, cfg, category_id, state_dir, number, count, on_step)
        )
        mx.clear_cache()


def run_search(
    model: Sam3,
    cache: FeatureCache,
    dataset: Dataset,
    run_dir: Path,
    cfg: SearchConfig,
    categories: list[int] | None = None,
    resume: bool = False,
    on_step: Callable[[SearchStep], None] = lambda step: None,
    cluster: ClusterConfig | None = None,
) -> SearchResult:
    """Search each category (all that have instances when ``categories`` is None) into
    ``run_dir``, or resume the run there; returns what ``aliases.json`` holds. Messages go to the
    ``mlx_alias`` logger; ``on_step`` receives every search step (``SearchStep``; on a cluster,
    the steps whose checkpoints arrive). With ``cluster`` the categories are spread over its
    machines (``cluster.py``); the run folder, written here alone, is the same."""
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
        todo = [(number, c) for number, c in enumerate(chosen, start=1) if c not in finished]
        if cluster is None:
            found = _search_here(model, cache, dataset, cfg, todo, len(chosen), run_dir / STATE, on_step)
        else:
            job = _worker_job(model, cache, dataset, settings)
            found = search_on_cluster(cluster, job, cfg, todo, len(chosen), run_dir / STATE, on_step)
        place = {c: i for i, c in enumerate(chosen)}
        for alias in found:  # aliases.json in the order of the category list, whatever order they finish in
            result.aliases.append(alias)
            result.aliases.sort(key=lambda a: place[a.category_id])
            write_json(run_dir / ALIASES, result.to_json())
            for length in cfg.lengths:
                (run_dir / STATE / state_name(alias.category_id, length)).unlink(missing_ok=True)
        write_json(run_dir / ALIASES, result.to_json())
        write_report(model, dataset, result, run_dir)
    return result
