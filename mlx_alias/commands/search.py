"""``mlx-alias search``: the alias search over a dataset's categories, into a run folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from .console import CACHE, Dtype, SearchStatus, category_ids, console, load_weights


def command(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    dataset: Path = typer.Option(
        ..., "--dataset", help="COCO annotation file, or a folder holding one and the images."
    ),
    out: Path = typer.Option(..., "--out", help="Run folder (results, report, checkpoints)."),
    images: Path = typer.Option(None, "--images", help="Image folder, if not found beside the annotations."),
    categories: str = typer.Option(None, "--categories", help="Comma-separated category ids (default: all)."),
    lengths: list[int] = typer.Option(
        [4], "--length", min=1, max=30, help="Alias length in tokens; repeat to search several (the best is kept)."
    ),
    budget: int = typer.Option(
        6000,
        "--budget",
        min=1,
        help="Exact evaluations (candidate x training image) per category and length; "
        "with the sweep, more than its cost (every allowed token once, then at most 64 tokens "
        "and, for 2+ tokens, 56 pairs per training image).",
    ),
    holdout: float = typer.Option(
        0.25, "--holdout", min=0.0, max=0.95, help="Fraction of images held out per category."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of the search."),
    batch: int = typer.Option(
        8,
        "--batch",
        min=0,
        help="(candidate, image) pairs per grounding call; 0: as many as fit "
        "in half the free memory (measured; larger batches prune raced candidates later).",
    ),
    dtype: Dtype = typer.Option(None, "--dtype", help="Compute dtype (default: the weights' dtype)."),
    threshold: float = typer.Option(
        0.5, "--threshold", min=0.0, max=1.0, help="Official score above which a query is a predicted instance."
    ),
    roundtrip_only: bool = typer.Option(
        False, "--roundtrip-only", help="Only aliases whose text re-tokenizes to the same ids."
    ),
    phases: str = typer.Option(
        "soft,evolution,gcg",
        "--phases",
        help="Comma-separated search phases in order, among sweep, concept, soft, evolution, gcg.",
    ),
    soft_starts: int = typer.Option(
        8,
        "--soft-starts",
        min=1,
        help="Soft prompts the soft phase climbs side by side, from the best starts "
        "(each costs one surrogate gradient per step).",
    ),
    soft_images: int = typer.Option(
        0,
        "--soft-images",
        min=0,
        help="Training images each soft-phase gradient step sees, a fresh random minibatch per "
        "step (0: all; its projections are always scored on all).",
    ),
    score_temperature: float = typer.Option(
        None,
        "--score-temperature",
        min=1e-6,
        help="Width of the surrogate's soft score threshold (default: an eighth "
        "of the model's score spread on random aliases).",
    ),
    mask_temperature: float = typer.Option(
        None,
        "--mask-temperature",
        min=1e-6,
        help="The surrogate's masks are sigmoid(logit / this) (default: a fifth "
        "of the model's median |mask logit| on random aliases).",
    ),
    cache: Path = typer.Option(CACHE, "--cache", help="Image feature cache folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT."),
    ray: str = typer.Option(
        None,
        "--ray",
        help="Spread the categories over a Ray cluster: its address (auto, HOST:PORT), or 'local' "
        "to start Ray on this machine with --workers workers.",
    ),
    workers: int = typer.Option(
        None, "--workers", min=1, help="With --ray local: workers sharing this machine's CPUs (default 2)."
    ),
) -> None:
    """Search SAM3's token space for the alias that best reproduces each category's masks."""

    def action() -> None:
        from mlx_alias.data.coco import load_dataset
        from mlx_alias.search.cache import FeatureCache
        from mlx_alias.search.cluster import ClusterConfig
        from mlx_alias.search.driver import SearchConfig
        from mlx_alias.search.objective import ObjectiveConfig
        from mlx_alias.search.run import run_search

        if workers is not None and ray != "local":
            raise ValueError("--workers applies to --ray local only (a cluster has one worker per machine)")
        cluster = None if ray is None else ClusterConfig(ray, workers or ClusterConfig.workers)

        cfg = SearchConfig(
            lengths=tuple(dict.fromkeys(lengths)),
            budget=budget,
            holdout_fraction=holdout,
            seed=seed,
            pairs_per_batch=batch,
            roundtrip_only=roundtrip_only,
            objective=ObjectiveConfig(
                threshold=threshold, temperature=score_temperature, mask_temperature=mask_temperature
            ),
        )
        cfg = dataclasses.replace(cfg, soft=dataclasses.replace(cfg.soft, starts=soft_starts, images=soft_images))
        cfg = cfg.with_phases(tuple(p.strip() for p in phases.split(",")))
        data = load_dataset(dataset, images)
        model = load_weights(weights, dtype)
        feature_cache = FeatureCache(model, weights, cache)

        result = run_search(
            model, feature_cache, data, out, cfg, category_ids(categories), resume, SearchStatus(), cluster
        )
        console.end_status()
        for alias in result.aliases:
            base = alias.baseline
            versus = f" (natural label {base.holdout_score:.3f})" if base and base.holdout_score is not None else ""
            held = "n/a" if alias.holdout_score is None else f"{alias.holdout_score:.3f}"
            typed = (
                "" if alias.roundtrip else " (its text does not re-tokenize to these tokens: apply it by its tokens)"
            )
            typer.echo(
                f"category {alias.category_id}: {alias.text!r} {list(alias.tokens)} train {alias.train_score:.3f}, "
                f"holdout {held}{versus}{typed}"
            )
        for item in result.skipped:
            named = f" ({item.name!r})" if item.name else ""
            typer.echo(f"category {item.category_id}{named}: skipped, {item.reason}")
        typer.echo(
            f"results in {out / 'aliases.json'}; apply an alias with: mlx-alias segment --weights {weights} "
            f"--image IMAGE --aliases {out / 'aliases.json'} --category ID"
        )

    def interrupted() -> str:
        if (out / "run.json").is_file():
            return f"interrupted; the run in {out} can be resumed: run the same command with --resume"
        return "interrupted"

    console.guarded(action, interrupted)
