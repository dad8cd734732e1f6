"""Alias against label on the scene world, with the trained tiny SAM3 that ships with the package.

    python benchmarks/alias_vs_label.py [--concepts hexagon purple ...] [--search-seeds 0 100]
        [--images 24] [--test-images 48] [--budget 1200] [--lengths 1 2]
        [--phases soft,evolution,gcg] [--gcg-far 64] [--json]
    python benchmarks/alias_vs_label.py --concepts warm --probe yellow "yellow red"

For each concept (``mlx_alias.scenes.concepts.CONCEPTS``: synonyms, named, composites) a COCO
dataset of ``--images`` scenes is drawn from the renderer's ground truth, with one category
named by the concept's label, and the default search (or the ``SearchConfig`` changes given)
runs on its train split, once per search seed. Every alias is then scored, beside the label,
the model's own word for the concept (the oracle; synonyms and named concepts) and, for
composites, the best single word of the model's vocabulary (chosen on the train split), on
``--test-images`` more scenes of the same stream that no search sees. Scores are the project's
objective at sam3's threshold 0.5. The table gives each search; the summary, per family, the
median of alias / oracle (synonyms), alias / label (named) and alias - best word (composites).
With ``--probe``, no search: the texts given, scored on each concept's training split (that of
the first search seed) and its test scenes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlx_alias.data.coco import load_dataset
from mlx_alias.model.weights import load_model
from mlx_alias.scenes.concepts import CONCEPTS, WORDS, Concept
from mlx_alias.scenes.dataset import write_dataset
from mlx_alias.scenes.weights import convert_shipped
from mlx_alias.search.cache import FeatureCache
from mlx_alias.search.category import best_length
from mlx_alias.search.driver import SearchConfig, search_category
from mlx_alias.search.objective import ObjectiveConfig
from mlx_alias.search.phase import ids_of
from mlx_alias.search.task import category_task, scorer_for
from mlx_alias.tokenizer import load_tokenizer

THRESHOLD = 0.5  # sam3's own: the trained model is calibrated
OBJECTIVE = ObjectiveConfig(threshold=THRESHOLD)
KNOWN = 0.1  # a word scoring under this on the test scenes is one the model does not know (random captions score 0)


def _words() -> list[str]:
    return sorted({w for words in WORDS.values() for w in words.values()})


def _datasets(model, cache, concept: Concept, args, root: Path):
    """The concept's search dataset and the scorer of its unseen test scenes."""
    folder = root / concept.label.replace(" ", "-")
    write_dataset(folder / "data", [concept], args.images, args.world_seed)
    write_dataset(folder / "test", [concept], args.test_images, args.world_seed, first=args.images)
    test = load_dataset(folder / "test")
    return load_dataset(folder / "data"), scorer_for(model, cache, test, 1, sorted(test.images), OBJECTIVE, 8)


def _task(model, cache, data, holdout: float, seed: int):
    return category_task(
        model,
        cache,
        data,
        1,
        holdout_fraction=holdout,
        seed=seed,
        config=OBJECTIVE,
        pairs_per_batch=SearchConfig().pairs_per_batch,
    )


def probe_concept(model, cache, concept: Concept, args, root: Path) -> list[dict]:
    """The ``--probe`` texts' scores on the training split of the first search seed and on the
    test scenes, with no search."""
    tokenizer = load_tokenizer()
    data, test_scorer = _datasets(model, cache, concept, args, root)
    train = _task(model, cache, data, args.holdout, args.search_seeds[0]).train
    ids = tokenizer(args.probe)
    pairs = zip(args.probe, train.exact(ids), test_scorer.exact(ids))
    return [{"label": concept.label, "text": t, "train": a.score, "test": b.score} for t, a, b in pairs]


def run_concept(model, cache, concept: Concept, args, root: Path) -> list[dict]:
    tokenizer = load_tokenizer()
    data, test_scorer = _datasets(model, cache, concept, args, root)

    def on_test(texts: list[str]) -> list[float]:
        return [r.score for r in test_scorer.exact(tokenizer(texts))]

    rows = []
    for search_seed in args.search_seeds:
        cfg = SearchConfig(
            lengths=tuple(args.lengths),
            budget=args.budget,
            holdout_fraction=args.holdout,
            seed=search_seed,
            objective=OBJECTIVE,
        )
        if args.phases:
            cfg = cfg.with_phases(tuple(args.phases.split(",")))
        if args.gcg_far is not None:
            cfg = dataclasses.replace(cfg, gcg=dataclasses.replace(cfg.gcg, far=args.gcg_far))
        task = _task(model, cache, data, cfg.holdout_fraction, cfg.seed)
        started = time.time()
        outcomes = [search_category(task, model, tokenizer, cfg, length) for length in cfg.lengths]
        seconds = time.time() - started
        # each length's best, to see what the choice by training score (the search's) gives up
        lengths = [
            {
                "alias": tokenizer.decode(o.best.tokens),
                "train": o.best.score,
                "holdout": task.holdout.exact(ids_of(tokenizer, [o.best.tokens]))[0].score if task.holdout else None,
                "test": test_scorer.exact(ids_of(tokenizer, [o.best.tokens]))[0].score,
            }
            for o in outcomes
        ]
        kept = best_length(outcomes)
        best, alias_test = outcomes[kept].best, lengths[kept]["test"]
        row = {
            "label": concept.label,
            "family": concept.family,
            "search_seed": search_seed,
            "alias": tokenizer.decode(best.tokens),
            "tokens": list(best.tokens),
            "alias_train": best.score,
            "alias_test": alias_test,
            "label_test": on_test([concept.label])[0],
            "oracle": concept.oracle,
            "oracle_test": on_test([concept.oracle])[0] if concept.oracle else None,
            "evaluations": sum(o.evaluations for o in outcomes),
            "seconds": round(seconds, 1),
            "lengths": lengths,
        }
        if concept.family == "composite":
            words = _words()
            train = [r.score for r in task.train.exact(tokenizer(words))]
            chosen = words[max(range(len(words)), key=train.__getitem__)]
            row.update(best_word=chosen, best_word_test=on_test([chosen])[0])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per family: the median of the figure its acceptance reads, and how many searches. A ratio
    needs a base the model knows: synonyms whose oracle, named concepts whose label scores under
    ``KNOWN`` on the test scenes are left out of the ratio's median (and counted), as a ratio to
    a score of about zero is noise."""
    out = {}
    for family, figure in (
        ("synonym", "alias / oracle"),
        ("named", "alias / label"),
        ("composite", "alias - best word"),
    ):
        chosen = [r for r in rows if r["family"] == family]
        if not chosen:
            continue
        out[family] = {
            "figure": figure,
            "searches": len(chosen),
            "alias_test_median": statistics.median(r["alias_test"] for r in chosen),
            "label_test_median": statistics.median(r["label_test"] for r in chosen),
        }
        if family == "composite":
            out[family]["median"] = statistics.median(r["alias_test"] - r["best_word_test"] for r in chosen)
            continue
        base = "oracle_test" if family == "synonym" else "label_test"
        known = [r for r in chosen if r[base] >= KNOWN]
        out[family].update(
            median=statistics.median(r["alias_test"] / r[base] for r in known) if known else None,
            unknown_base=len(chosen) - len(known),
        )
        if family == "synonym" and known:
            out[family]["alias_test_median_known"] = statistics.median(r["alias_test"] for r in known)
            out[family]["label_test_median_known"] = statistics.median(r["label_test"] for r in known)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="MLX weights (default: the shipped model, converted)")
    parser.add_argument("--concepts", nargs="*", help="labels of the concepts (default: all)")
    parser.add_argument("--search-seeds", nargs="*", type=int, default=[0, 100])
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--test-images", type=int, default=48)
    parser.add_argument("--budget", type=int, default=SearchConfig().budget)
    parser.add_argument("--lengths", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--holdout", type=float, default=SearchConfig().holdout_fraction)
    parser.add_argument("--phases", help="comma-separated search phases (default: the search's)")
    parser.add_argument("--gcg-far", type=int, help="GCG's far tokens per position (default: the search's)")
    parser.add_argument("--probe", nargs="+", help="score these texts on each concept's data instead of searching")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    concepts = [c for c in CONCEPTS if not args.concepts or c.label in args.concepts]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = args.weights or convert_shipped(root / "weights")
        model = load_model(weights)
        cache = FeatureCache(model, weights, root / "cache")
        if args.probe:
            probes = [row for concept in concepts for row in probe_concept(model, cache, concept, args, root)]
            for r in probes:
                print(
                    json.dumps(r)
                    if args.json
                    else f"{r['label']:14s} {r['text']:28s} {r['train']:6.3f} {r['test']:6.3f}"
                )
            return
        rows = [row for concept in concepts for row in run_concept(model, cache, concept, args, root)]
    result = {
        "rows": rows,
        "summary": summary(rows),
        "settings": {k: v for k, v in vars(args).items() if k != "weights"},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{'label':14s} {'family':9s} {'seed':>4s} {'alias':24s} {'alias':>6s} {'label':>6s} {'oracle':>6s} {'word':>6s} {'evals':>6s} {'s':>6s}"
    )
    for r in rows:
        oracle = "" if r["oracle_test"] is None else f"{r['oracle_test']:.3f}"
        word = f"{r['best_word_test']:.3f}" if "best_word_test" in r else ""
        print(
            f"{r['label']:14s} {r['family']:9s} {r['search_seed']:4d} {r['alias'][:24]!s:24s} {r['alias_test']:6.3f} "
            f"{r['label_test']:6.3f} {oracle:>6s} {word:>6s} {r['evaluations']:6d} {r['seconds']:6.0f}"
        )
    for family, s in result["summary"].items():
        median = "n/a" if s["median"] is None else f"{s['median']:.3f}"
        left_out = f", {s['unknown_base']} left out: base under {KNOWN}" if s.get("unknown_base") else ""
        print(
            f"{family}: median {s['figure']} {median} over {s['searches']} searches{left_out} "
            f"(alias {s['alias_test_median']:.3f}, label {s['label_test_median']:.3f})"
        )


if __name__ == "__main__":
    main()
