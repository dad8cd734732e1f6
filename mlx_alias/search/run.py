"""A search run over the categories of a dataset: the run folder, resume, and the results.

RUN_DIR holds ``run.json`` (the settings, the weights fingerprint and the dataset; a resume
must match them), ``state/<category>-<length>.safetensors`` (the checkpoints of the category in progress),
``aliases.json`` (one entry per finished category, rewritten atomically after each) and the
report (``report.md`` and ``figures/``). A killed run resumes with ``--resume`` from its last step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from mlx_alias.data.coco import Dataset
from mlx_alias.data.split import caution, describe
from mlx_alias.files import atomic_write_bytes
from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import load_tokenizer

from .batching import pairs_for
from .cache import FeatureCache
from .driver import Progress, SearchConfig, search_category
from .phase import ids_of
from .report import write_report
from .task import category_task


class RunError(ValueError):
    """A run folder that cannot be started or resumed; the message is one sentence."""


def _settings(cfg: SearchConfig, fingerprint: str, dataset: Dataset, categories: list[int]) -> dict:
    return {"search": json.loads(json.dumps(dataclasses.asdict(cfg))), "weights": fingerprint,
            "dataset": str(dataset.annotation_file), "categories": categories}


def _with_batch(cfg: SearchConfig, model: Sam3, cache: FeatureCache, dataset: Dataset, run_dir: Path, resume: bool,
                echo: Callable[[str], None]) -> SearchConfig:
    """``pairs_per_batch`` 0 means as many pairs as fit in free memory: measured on the dataset's
    first image, or, on resume, the number the run started with (racing's rounds follow the
    batch, so the same number keeps a resumed search on its course)."""
    if cfg.pairs_per_batch:
        return cfg
    meta = run_dir / "run.json"
    if resume and meta.is_file():
        started = json.loads(meta.read_text()).get("search", {}).get("pairs_per_batch")
        if started:
            return dataclasses.replace(cfg, pairs_per_batch=started)
    pairs = pairs_for(model, cache, dataset)
    echo(f"{pairs} (candidate, image) pairs per grounding call (measured to fit in half the free memory)")
    return dataclasses.replace(cfg, pairs_per_batch=pairs)


def _write_json(path: Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def prepare_run(run_dir: Path, settings: dict, resume: bool) -> list[dict]:
    """Create RUN_DIR, or check that it is this run's on ``--resume``; returns the finished entries."""
    meta = run_dir / "run.json"
    if resume:
        if not meta.is_file():
            raise RunError(f"{run_dir} holds no run to resume (run.json is missing)")
        if json.loads(meta.read_text()) != settings:
            raise RunError(f"{run_dir} was started with other settings, weights or dataset; resume with the same ones")
        done = run_dir / "aliases.json"
        return json.loads(done.read_text()) if done.is_file() else []
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already holds files (pass --resume to continue that run)")
    (run_dir / "state").mkdir(parents=True, exist_ok=True)
    _write_json(meta, settings)
    return []


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


def run_search(model: Sam3, cache: FeatureCache, dataset: Dataset, run_dir: Path, cfg: SearchConfig,
               categories: list[int], resume: bool = False,
               echo: Callable[[str], None] = print, report: Callable[[Progress], None] = lambda p: None) -> list[dict]:
    tokenizer = load_tokenizer()
    for category_id in categories:
        dataset.check_category(category_id)
    cfg = _with_batch(cfg, model, cache, dataset, run_dir, resume, echo)
    entries = prepare_run(run_dir, _settings(cfg, cache.fingerprint, dataset, categories), resume)
    finished = {e["category_id"] for e in entries}
    for category_id in categories:
        if category_id in finished:
            continue
        task = category_task(model, cache, dataset, category_id, holdout_fraction=cfg.holdout_fraction,
                             seed=cfg.seed, config=cfg.objective, pairs_per_batch=cfg.pairs_per_batch)
        echo(f"{task.category.label}: {describe(task.split)}")
        if warning := caution(task.split):
            echo(f"{task.category.label}: {warning}")
        states = [run_dir / "state" / f"{category_id}-{length}.safetensors" for length in cfg.lengths]
        outcomes = [search_category(task, model, tokenizer, cfg, length, state, report)
                    for length, state in zip(cfg.lengths, states)]
        # the best train score; of equals, the shortest alias
        best = max((o.best for o in outcomes), key=lambda c: (c.score, -len(c.tokens)))
        entry = {
            "category_id": category_id,
            "name": task.category.name,
            "tokens": list(best.tokens),
            "text": tokenizer.decode(best.tokens),
            "roundtrip": tokenizer.roundtrips(best.tokens),
            "train_score": best.score,
            "holdout_score": task.holdout.exact(ids_of(tokenizer, [best.tokens]))[0].score if task.holdout else None,
            "evaluations": sum(o.evaluations for o in outcomes),
            "split": dataclasses.asdict(task.split),
            "curve": _joined_curve([o.curve for o in outcomes]),
            "lengths": [{"length": len(o.best.tokens), "tokens": list(o.best.tokens),
                         "text": tokenizer.decode(o.best.tokens), "train_score": o.best.score,
                         "evaluations": o.evaluations,
                         "surrogate_temperatures": None if o.surrogate is None else
                         {"score": o.surrogate.temperature, "mask": o.surrogate.mask_temperature}}
                        for o in outcomes],
        }
        if task.category.name:
            name = task.category.name
            entry["baseline"] = {
                "text": name,
                "train_score": score_texts(task.train, tokenizer, [name])[0],
                "holdout_score": score_texts(task.holdout, tokenizer, [name])[0] if task.holdout else None,
            }
        entries.append(entry)
        _write_json(run_dir / "aliases.json", entries)
        for state in states:
            state.unlink(missing_ok=True)
        mx.clear_cache()
    write_report(model, dataset, entries, cfg.objective.threshold, run_dir)
    return entries
