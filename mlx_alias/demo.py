"""``mlx-alias demo``: the whole job on an embedded default, with no download. A tiny random
SAM3 is made and converted, a small synthetic image set is drawn, a hidden prompt is planted
(``plant``), and the search looks for an alias that reproduces its masks; the result is
compared with the hidden prompt's own score on the holdout images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .files import atomic_directory

HIDDEN_PROMPT = "velvet lantern"
IMAGES = 12
TOP_FRACTION = 0.1  # of the hidden prompt's queries that count as instances
# The threshold's gap is a few hundredths of a spread wide and unseen images fill it, so queries
# this close to it are planted as crowd regions rather than decided by a hair.
MARGIN_SPREADS = 0.1


def planting_rule(model, paths: list[Path], ids: np.ndarray, margin_spreads: float = 0.0) -> tuple[float, float]:
    """The threshold and margin at which to plant the prompt ``ids`` on the images ``paths``.

    Random weights are not calibrated (sam3's 0.5 is for trained ones): the threshold sits in
    the widest gap between the hidden prompt's sorted official scores over the images, looked
    for around the 90th percentile (about 2 of 20 queries per image are instances). A plain
    percentile lands inside a dense run of scores, where whether a query counts is noise; in a
    gap, planted instances clear it by a margin. The margin (``plant``'s: the queries within it
    of the threshold become crowd regions) is ``margin_spreads`` times the standard deviation of
    those scores: the gap is narrow (a few hundredths of it) and unseen images fill it. Plant
    and search use the same threshold."""
    import mlx.core as mx

    from .image import load_image, preprocess
    from .plant import MAX_INSTANCES

    text = model.encode_text(mx.array(ids))
    scores = []
    for path in paths:
        features = model.encode_image(mx.array(preprocess(load_image(path), model.cfg.vision.image_size)[None]))
        scores.append(np.array(model.ground(features, text).scores[0]))
    return gap_threshold(scores, TOP_FRACTION, MAX_INSTANCES), margin_spreads * float(np.std(np.concatenate(scores)))


def gap_threshold(scores: list[np.ndarray], fraction: float, max_instances: int) -> float:
    """The midpoint of the widest gap between consecutive sorted scores of all images, among
    the cuts that keep more than half and at most one and a half times ``fraction`` of the
    scores above them, and at most ``max_instances`` of any one image's: ``plant`` keeps that
    many per image, so more would make the hidden prompt's own extra queries false positives.
    Raises ValueError when no cut qualifies."""
    ranked = np.sort(np.concatenate(scores))[::-1]
    lo, hi = int(len(ranked) * fraction * 0.5), int(len(ranked) * fraction * 1.5)
    cuts = (ranked[lo:hi] + ranked[lo + 1:hi + 1]) / 2
    most = np.array([max(int((image > cut).sum()) for image in scores) for cut in cuts])  # on one image
    gaps = np.where(most <= max_instances, ranked[lo:hi] - ranked[lo + 1:hi + 1], -np.inf)
    if not np.isfinite(gaps).any():
        raise ValueError(f"the hidden prompt's scores leave no cut with {fraction * 50:.0f}-{fraction * 150:.0f}% "
                         f"of queries above it and at most {max_instances} on any image; try another seed")
    return float(cuts[int(np.argmax(gaps))])


def synthetic_images(folder: Path, count: int = IMAGES, seed: int = 0, first: int = 0) -> list[Path]:
    """Textured backgrounds with a few filled shapes, of assorted sizes, as PNG files: images
    ``first`` to ``first + count - 1`` of the seed's stream, so that later images of a stream
    can be drawn apart from its first ones (a benchmark's unseen test images)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first + count):
        height, width = int(rng.integers(96, 200)), int(rng.integers(96, 200))
        y, x = np.mgrid[0:height, 0:width]
        phase = rng.uniform(0, 6.28, 3)
        background = np.stack([127 + 100 * np.sin(x / rng.uniform(5, 30) + phase[c] + y / rng.uniform(8, 40))
                               for c in range(3)], axis=-1)
        picture = Image.fromarray(background.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            x1, y1 = x0 + int(rng.integers(15, width // 2 + 16)), y0 + int(rng.integers(15, height // 2 + 16))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        if i < first:
            continue
        paths.append(folder / f"synthetic-{i:02d}.png")
        picture.save(paths[-1])
    return paths


def demo(out: Path, *, seed: int = 0, budget: int = 1200, overwrite: bool = False,
         echo: Callable[[str], None] = print, report: Callable = lambda p: None) -> dict:
    """Run the demo into ``out``, built in a temporary folder renamed at the end (so a killed
    demo leaves nothing behind). Returns a summary."""
    with atomic_directory(out, overwrite=overwrite) as staging:
        summary = _demo(staging, seed, budget, echo, report)
    summary["out"] = str(out)
    return summary


def _demo(out: Path, seed: int, budget: int, echo: Callable[[str], None], report: Callable) -> dict:
    from .convert.convert import convert
    from .data.coco import load_dataset
    from .model.weights import load_model
    from .plant import plant
    from .search.cache import FeatureCache
    from .search.driver import SearchConfig
    from .search.evaluate import evaluate
    from .search.objective import ObjectiveConfig
    from .search.run import run_search
    from .search.task import scorer_for
    from .segment import make_prompt
    from .tokenizer import load_tokenizer

    try:
        from .config import tiny_config
        from .reference.build import build_model, shape_tiny
        from .reference.checkpoint import save_checkpoint
    except ImportError as exc:
        raise ImportError(f"demo makes its model through the reference path (pip install 'mlx-alias[reference]'): {exc}") from exc
    cfg = tiny_config()
    echo(f"1/4 a tiny random SAM3 (seed {seed})")
    reference = build_model(cfg, seed=seed, device="cpu")
    shape_tiny(reference, seed)
    save_checkpoint(reference, cfg, out / "checkpoint", "sam3")
    convert(out / "checkpoint", out / "weights")
    model = load_model(out / "weights")
    echo(f"2/4 {IMAGES} synthetic images")
    paths = synthetic_images(out / "images", IMAGES, seed)
    hidden_prompt = make_prompt(HIDDEN_PROMPT, None)
    threshold, margin = planting_rule(model, paths, hidden_prompt.ids, MARGIN_SPREADS)
    echo(f"3/4 planting the hidden prompt {HIDDEN_PROMPT!r} (instances: official score > {threshold + margin:.4g}; "
         f"crowd regions: within {margin:.2g} of {threshold:.4g})")
    planted = plant(model, out / "images", hidden_prompt, out / "dataset", threshold=threshold, margin=margin)
    echo(f"    {planted.positives} of {planted.images} images hold {planted.instances} instances, "
         f"{planted.crowd_regions} crowd regions")
    dataset = load_dataset(out / "dataset")
    cache = FeatureCache(model, out / "weights", out / "cache")
    search = SearchConfig(lengths=(len(load_tokenizer().encode(HIDDEN_PROMPT)),), budget=budget,
                          holdout_fraction=0.34, seed=seed, objective=ObjectiveConfig(threshold=threshold))
    echo(f"4/4 searching ({search.lengths[0]}-token aliases, {budget} evaluations)")
    document = run_search(model, cache, dataset, out / "run", search, echo=echo, report=report)

    def make_scorer(cid: int, ids: list[int]):
        return scorer_for(model, cache, dataset, cid, ids, search.objective, search.pairs_per_batch)

    # the alias and the hidden prompt on the alias's own holdout images
    alias_row, hidden_row = evaluate(dataset, load_tokenizer(), make_scorer, which="holdout",
                                     aliases=document["aliases"], prompts=[HIDDEN_PROMPT])
    alias = document["aliases"][0]
    return {"alias": alias["text"], "tokens": alias["tokens"], "alias_holdout": alias_row.score,
            "hidden_holdout": hidden_row.score, "evaluations": alias["evaluations"], "threshold": threshold, "margin": margin}
