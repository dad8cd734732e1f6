"""``mlx-alias demo``: the whole job on an embedded default, with no download. A tiny random
SAM3 is made and converted, a small synthetic image set is drawn, a hidden prompt is planted
(``plant``), and the search looks for an alias that reproduces its masks; the result is
compared with the hidden prompt's own score on the holdout images."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .files import atomic_directory

log = logging.getLogger(__name__)

HIDDEN_PROMPT = "velvet lantern"
IMAGES = 12


def demo(
    out: Path, *, seed: int = 0, budget: int = 1200, overwrite: bool = False, on_step: Callable = lambda step: None
) -> dict:
    """Run the demo into ``out``, built in a temporary folder renamed at the end (so a killed
    demo leaves nothing behind). Returns a summary."""
    with atomic_directory(out, overwrite=overwrite) as staging:
        summary = _demo(staging, seed, budget, on_step)
    summary["out"] = str(out)
    return summary


def _demo(out: Path, seed: int, budget: int, on_step: Callable) -> dict:
    from .convert.convert import convert
    from .data.coco import load_dataset
    from .model.weights import load_model
    from .plant import MARGIN_SPREADS, plant, planting_rule, synthetic_images
    from .prediction import make_prompt
    from .search.cache import FeatureCache
    from .search.driver import SearchConfig
    from .search.evaluate import evaluate
    from .search.objective import ObjectiveConfig
    from .search.run import run_search
    from .search.task import scorer_for
    from .tokenizer import load_tokenizer

    try:
        from .config import tiny_config
        from .reference.build import build_model, shape_tiny
        from .reference.checkpoint import save_checkpoint
    except ImportError as exc:
        raise ImportError(
            f"demo makes its model through the reference path (pip install 'mlx-alias[reference]'): {exc}"
        ) from exc
    cfg = tiny_config()
    log.info(f"1/4 a tiny random SAM3 (seed {seed})")
    reference = build_model(cfg, seed=seed, device="cpu")
    shape_tiny(reference, seed)
    save_checkpoint(reference, cfg, out / "checkpoint", "sam3")
    convert(out / "checkpoint", out / "weights")
    model = load_model(out / "weights")
    log.info(f"2/4 {IMAGES} synthetic images")
    paths = synthetic_images(out / "images", IMAGES, seed)
    hidden_prompt = make_prompt(HIDDEN_PROMPT, None)
    threshold, margin = planting_rule(model, paths, hidden_prompt.ids, MARGIN_SPREADS)
    log.info(
        f"3/4 planting the hidden prompt {HIDDEN_PROMPT!r} (instances: official score > {threshold + margin:.4g}; "
        f"crowd regions: within {margin:.2g} of {threshold:.4g})"
    )
    planted = plant(model, out / "images", hidden_prompt, out / "dataset", threshold=threshold, margin=margin)
    log.info(
        f"    {planted.positives} of {planted.images} images hold {planted.instances} instances, "
        f"{planted.crowd_regions} crowd regions"
    )
    dataset = load_dataset(out / "dataset")
    cache = FeatureCache(model, out / "weights", out / "cache")
    search = SearchConfig(
        lengths=(len(load_tokenizer().encode(HIDDEN_PROMPT)),),
        budget=budget,
        holdout_fraction=0.34,
        seed=seed,
        objective=ObjectiveConfig(threshold=threshold),
    )
    log.info(f"4/4 searching ({search.lengths[0]}-token aliases, {budget} evaluations)")
    result = run_search(model, cache, dataset, out / "run", search, on_step=on_step)

    def make_scorer(cid: int, ids: list[int]):
        return scorer_for(model, cache, dataset, cid, ids, search.objective, search.pairs_per_batch)

    # the alias and the hidden prompt on the alias's own holdout images
    alias_row, hidden_row = evaluate(
        dataset, load_tokenizer(), make_scorer, which="holdout", aliases=result.aliases, prompts=[HIDDEN_PROMPT]
    )
    alias = result.aliases[0]
    return {
        "alias": alias.text,
        "tokens": list(alias.tokens),
        "alias_holdout": alias_row.score,
        "hidden_holdout": hidden_row.score,
        "evaluations": alias.evaluations,
        "threshold": threshold,
        "margin": margin,
    }
