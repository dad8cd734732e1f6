"""``mlx-alias demo``: the whole job on the embedded default, with no download and no torch.

The tiny SAM3 trained on the scene world ships with the package (``mlx_alias.scenes``). The
demo converts it, draws a COCO dataset of scenes whose one category a user has labelled with a
word the model never saw (a synonym concept: ``LABEL``), searches for an alias, and shows the
label beside the alias: on the holdout images (the report's overlays: ground truth | label |
alias) and on unseen scenes of the same world.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .files import atomic_directory

log = logging.getLogger(__name__)

LABEL = "purple"  # the dataset's name for what the model learned as "violet"
IMAGES = 24  # the search's dataset: train and holdout
TEST_IMAGES = 48  # unseen scenes the search never sees
LENGTHS = (1,)  # the model's own word for the concept is one token
# The sweep, then evolution and GCG: the model's own word for the concept is one token, which a
# screen of every token on one training image finds; from random starts the trained model
# predicts nothing, so the gradient seldom points to it and evolution finds it only by chance.
# The soft phase's gradient steps over every training image take minutes on 2 cores
# (docs/method.md, "Phases").
PHASES = ("sweep", "evolution", "gcg")
# exact evaluations: the sweep's (49,405 tokens on one image, then at most 64 raced on the 18
# training images) and about the search's default 6,000 for the phases after it
BUDGET = 57_000


def demo(
    out: Path, *, seed: int = 0, budget: int = BUDGET, overwrite: bool = False, on_step: Callable = lambda step: None
) -> dict:
    """Run the demo into ``out``, built in a temporary folder renamed at the end (so a killed
    demo leaves nothing behind). Returns a summary."""
    with atomic_directory(out, overwrite=overwrite) as staging:
        summary = _demo(staging, seed, budget, on_step)
    summary["out"] = str(out)
    return summary


def _demo(out: Path, seed: int, budget: int, on_step: Callable) -> dict:
    from .data.coco import load_dataset
    from .model.weights import load_model
    from .scenes.concepts import CONCEPTS
    from .scenes.dataset import write_dataset
    from .scenes.weights import convert_shipped
    from .search.cache import FeatureCache
    from .search.driver import SearchConfig
    from .search.objective import ObjectiveConfig
    from .search.phase import ids_of
    from .search.run import run_search
    from .search.task import scorer_for
    from .tokenizer import load_tokenizer

    concept = next(c for c in CONCEPTS if c.label == LABEL)
    log.info(f"1/4 the tiny SAM3 trained on the scene world (shipped with the package; it never saw {LABEL!r})")
    model = load_model(convert_shipped(out / "weights"))
    log.info(f"2/4 {IMAGES} scenes whose category is labelled {LABEL!r}, and {TEST_IMAGES} unseen ones")
    write_dataset(out / "dataset", [concept], IMAGES, seed)
    write_dataset(out / "unseen", [concept], TEST_IMAGES, seed, first=IMAGES)
    dataset, unseen = load_dataset(out / "dataset"), load_dataset(out / "unseen")
    cache = FeatureCache(model, out / "weights", out / "cache")
    search = SearchConfig(
        lengths=LENGTHS, budget=budget, seed=seed, objective=ObjectiveConfig(threshold=0.5)
    ).with_phases(PHASES)
    log.info(
        f"3/4 searching ({' and '.join(map(str, LENGTHS))}-token aliases, {budget} evaluations each, "
        f"phases {', '.join(PHASES)})"
    )
    result = run_search(model, cache, dataset, out / "run", search, on_step=on_step)
    alias = result.aliases[0]
    log.info("4/4 the label and the alias on the unseen scenes")
    tokenizer = load_tokenizer()
    scorer = scorer_for(model, cache, unseen, 1, sorted(unseen.images), search.objective, search.pairs_per_batch)
    label_unseen, alias_unseen = (
        r.score for r in scorer.exact(ids_of(tokenizer, [tuple(tokenizer.encode(LABEL)), alias.tokens]))
    )
    return {
        "label": LABEL,
        "alias": alias.text,
        "tokens": list(alias.tokens),
        "roundtrip": alias.roundtrip,
        "label_holdout": alias.baseline.holdout_score,
        "alias_holdout": alias.holdout_score,
        "label_unseen": label_unseen,
        "alias_unseen": alias_unseen,
        "evaluations": alias.evaluations,
        "unseen_images": TEST_IMAGES,
    }
