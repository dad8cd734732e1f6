"""``mlx-alias evaluate``: the search objective for aliases (with their natural labels) and
plain prompts on a dataset split, in MLX or through the PyTorch reference."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path

import typer

from .console import CACHE, category_ids, console, load_weights


class Backend(str, Enum):
    mlx = "mlx"
    torch = "torch"


class SplitName(str, Enum):
    train = "train"
    holdout = "holdout"
    all = "all"


def command(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    dataset: Path = typer.Option(
        ..., "--dataset", help="COCO annotation file, or a folder holding one and the images."
    ),
    aliases: Path = typer.Option(
        None,
        "--aliases",
        help="aliases.json from a search (scored with the natural labels "
        "and any --prompt, on each alias's own split, at its threshold).",
    ),
    prompt: list[str] = typer.Option(None, "--prompt", help="A plain prompt to score (repeatable)."),
    split: SplitName = typer.Option(
        SplitName.holdout, "--split", help="Which images: the split's train, holdout, or all."
    ),
    images: Path = typer.Option(None, "--images", help="Image folder, if not found beside the annotations."),
    categories: str = typer.Option(
        None, "--categories", help="With --prompt: comma-separated category ids (default: all)."
    ),
    holdout: float = typer.Option(
        0.25, "--holdout", min=0.0, max=0.95, help="Holdout fraction, when the split is not in the alias file."
    ),
    seed: int = typer.Option(0, "--seed", help="Split seed, when the split is not in the alias file."),
    threshold: float = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Official score above which a query is a predicted instance (default: the alias file's, else 0.5).",
    ),
    batch: int = typer.Option(
        8,
        "--batch",
        min=0,
        help="(candidate, image) pairs per grounding call; 0 (MLX only): "
        "as many as fit in half the free memory (measured).",
    ),
    backend: Backend = typer.Option(
        Backend.mlx, "--backend", help="mlx, or torch (the reference; needs --checkpoint)."
    ),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="With --backend torch: the PyTorch checkpoint."),
    cache: Path = typer.Option(CACHE, "--cache", help="Image feature cache folder (MLX)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Score aliases (with the natural labels) and plain prompts on a dataset split."""

    def action() -> None:
        from mlx_alias.data.coco import load_dataset
        from mlx_alias.prediction import text_ids
        from mlx_alias.search.alias_file import load_alias_file
        from mlx_alias.search.cache import weights_fingerprint
        from mlx_alias.search.evaluate import check_aliases, evaluate
        from mlx_alias.search.objective import ObjectiveConfig, prepare_target
        from mlx_alias.tokenizer import load_tokenizer

        if aliases is None and not prompt:
            raise ValueError("give --aliases FILE, --prompt TEXT (repeatable), or both")
        for text in prompt or []:
            text_ids(text)  # refuses blank and over-long prompts
        data = load_dataset(dataset, images)
        tokenizer = load_tokenizer()
        alias_file = load_alias_file(aliases, tokenizer) if aliases else None
        objective = ObjectiveConfig(threshold=0.5 if threshold is None else threshold)
        if alias_file is not None:
            check_aliases(alias_file, data)
            recorded = alias_file.result
            if alias_file.versioned:
                objective = (
                    recorded.objective
                    if threshold is None
                    else dataclasses.replace(recorded.objective, threshold=threshold)
                )
            if recorded.weights.get("sha256") not in (None, weights_fingerprint(weights, cache)):
                typer.echo(
                    f"note: {weights} are not the weights the aliases were searched with; scores may differ", err=True
                )
            if recorded.dataset.get("annotations_sha256") not in (None, data.annotations_sha256):
                typer.echo(
                    "note: the annotations differ from those the aliases were searched on; "
                    "the recorded splits name image ids of those",
                    err=True,
                )
        if backend is Backend.torch:
            if checkpoint is None:
                raise ValueError("--backend torch needs --checkpoint (the PyTorch weights)")
            if not batch:
                raise ValueError("--batch 0 (measured from free memory) is for the MLX backend; give a number")
            from mlx_alias.reference.checkpoint import load_reference
            from mlx_alias.reference.scoring import TorchScorer

            reference, cfg = load_reference(checkpoint)
            size = cfg.vision.grid * 4  # the mask resolution: the neck's 4x level

            def make_scorer(cid: int, ids: list[int]):
                targets = [prepare_target(*_target(data, i, cid), size) for i in ids]
                return TorchScorer(
                    reference, [data.images[i].path for i in ids], targets, objective, batch, cfg.vision.image_size
                )
        else:
            from mlx_alias.search.batching import pairs_for
            from mlx_alias.search.cache import FeatureCache
            from mlx_alias.search.task import scorer_for

            model = load_weights(weights)
            feature_cache = FeatureCache(model, weights, cache)
            pairs = batch or pairs_for(model, feature_cache, data)

            def make_scorer(cid: int, ids: list[int]):
                return scorer_for(model, feature_cache, data, cid, ids, objective, pairs)

        chosen = category_ids(categories)
        entries = alias_file.result.aliases if alias_file else None
        rows = evaluate(
            data,
            tokenizer,
            make_scorer,
            which=split.value,
            aliases=entries,
            prompts=prompt or None,
            categories=chosen,
            holdout_fraction=holdout,
            seed=seed,
        )
        for row in rows:
            if as_json:
                typer.echo(
                    json.dumps(
                        {
                            "category_id": row.category_id,
                            "text": row.text,
                            "tokens": row.tokens,
                            "split": row.split,
                            "score": row.score,
                        }
                    )
                )
            else:
                typer.echo(f"category {row.category_id} {row.split:7s} {row.score:7.4f}  {row.text!r}")

    console.guarded(action)


def _target(data, image_id: int, category_id: int):
    target = data.targets(image_id, category_id)
    return target.masks, target.crowd
