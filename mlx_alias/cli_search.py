"""The search commands of ``mlx-alias``: ``search``, ``evaluate``, ``plant`` and ``demo``
(registered on the app of ``cli.py``, which imports this module)."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path

import typer

from .cli import Dtype, load_weights, app, end_status, run_guarded, status


@app.command()
def plant(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    images: Path = typer.Option(..., "--images", help="Folder of images to annotate."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (annotations.json, images/, plant.json)."),
    prompt: str = typer.Option(None, "--prompt", help="The hidden prompt."),
    tokens: str = typer.Option(None, "--tokens", help="The hidden prompt as raw content token ids."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Official score above which a query is an instance."),
    margin: float = typer.Option(0.0, "--margin", min=0.0, max=1.0,
                                 help="Queries within this much of the threshold become crowd regions, which no score counts."),
    max_instances: int = typer.Option(5, "--max-instances", min=1, help="At most this many instances per image, best first."),
    name: str = typer.Option(None, "--name", help="Category name to record (default: none, the prompt stays hidden)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Make a COCO dataset whose masks are the model's predictions for a hidden prompt (a search benchmark)."""

    def action() -> None:
        from mlx_alias.plant import plant as run
        from mlx_alias.segment import make_prompt

        chosen = make_prompt(prompt, tokens)
        report = run(load_weights(weights), images, chosen, out, threshold=threshold, margin=margin,
                     max_instances=max_instances, name=name, overwrite=overwrite)
        crowds = f", {report.crowd_regions} crowd regions ({report.crowd_only} images with only those)" if margin else ""
        typer.echo(f"{report.images} images, {report.positives} with instances, {report.instances} instances{crowds} -> {out}")

    run_guarded(action)


def _categories(text: str | None) -> list[int] | None:
    """Comma-separated category ids (None: all categories)."""
    if text is None:
        return None
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--categories must be comma-separated category ids, got {text!r}") from None
    if not ids:
        raise ValueError(f"--categories names no category id (got {text!r})")
    return ids


def _model_in(weights: Path, dtype: "Dtype | None"):
    import mlx.core as mx

    model = load_weights(weights)
    if dtype is not None:
        model.set_dtype(getattr(mx, dtype.value))
    return model


@app.command()
def search(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    dataset: Path = typer.Option(..., "--dataset", help="COCO annotation file, or a folder holding one and the images."),
    out: Path = typer.Option(..., "--out", help="Run folder (results, report, checkpoints)."),
    images: Path = typer.Option(None, "--images", help="Image folder, if not found beside the annotations."),
    categories: str = typer.Option(None, "--categories", help="Comma-separated category ids (default: all)."),
    lengths: list[int] = typer.Option([4], "--length", min=1, max=30,
                                      help="Alias length in tokens; repeat to search several (the best is kept)."),
    budget: int = typer.Option(6000, "--budget", min=1,
                               help="Exact evaluations (candidate x training image) per category and length."),
    holdout: float = typer.Option(0.25, "--holdout", min=0.0, max=0.95, help="Fraction of images held out per category."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of the search."),
    batch: int = typer.Option(8, "--batch", min=0, help="(candidate, image) pairs per grounding call; 0: as many as fit "
                              "in half the free memory (measured; larger batches prune raced candidates later)."),
    dtype: Dtype = typer.Option(None, "--dtype", help="Compute dtype (default: the weights' dtype)."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Official score above which a query is a predicted instance."),
    roundtrip_only: bool = typer.Option(False, "--roundtrip-only", help="Only aliases whose text re-tokenizes to the same ids."),
    phases: str = typer.Option("soft,evolution,gcg", "--phases",
                               help="Comma-separated search phases in order, among concept, soft, evolution, gcg."),
    soft_starts: int = typer.Option(8, "--soft-starts", min=1,
                                    help="Soft prompts the soft phase climbs side by side, from the best starts "
                                    "(each costs one surrogate gradient per step)."),
    score_temperature: float = typer.Option(None, "--score-temperature", min=1e-6,
                                            help="Width of the surrogate's soft score threshold (default: an eighth "
                                            "of the model's score spread on random aliases)."),
    mask_temperature: float = typer.Option(None, "--mask-temperature", min=1e-6,
                                           help="The surrogate's masks are sigmoid(logit / this) (default: a fifth "
                                           "of the model's median |mask logit| on random aliases)."),
    cache: Path = typer.Option(Path.home() / ".cache" / "mlx-alias", "--cache", help="Image feature cache folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT."),
) -> None:
    """Search SAM3's token space for the alias that best reproduces each category's masks."""

    def action() -> None:
        from mlx_alias.data.coco import load_dataset
        from mlx_alias.search.cache import FeatureCache
        from mlx_alias.search.driver import SearchConfig
        from mlx_alias.search.objective import ObjectiveConfig
        from mlx_alias.search.run import run_search

        cfg = SearchConfig(lengths=tuple(dict.fromkeys(lengths)), budget=budget, holdout_fraction=holdout, seed=seed, pairs_per_batch=batch,
                           roundtrip_only=roundtrip_only,
                           objective=ObjectiveConfig(threshold=threshold, temperature=score_temperature,
                                                     mask_temperature=mask_temperature))
        cfg = dataclasses.replace(cfg, soft=dataclasses.replace(cfg.soft, starts=soft_starts))
        cfg = cfg.with_phases(tuple(p.strip() for p in phases.split(",")))
        data = load_dataset(dataset, images)
        model = _model_in(weights, dtype)
        feature_cache = FeatureCache(model, weights, cache)

        def show(p) -> None:
            status(f"{p.category} length {p.length} {p.phase:9s} {p.evaluations}/{p.budget} evaluations, best {p.best:.3f}")

        def echo(line: str) -> None:
            end_status()
            typer.echo(line, err=True)

        document = run_search(model, feature_cache, data, out, cfg, _categories(categories), resume,
                              echo=echo, report=show)
        end_status()
        for e in document["aliases"]:
            base = e.get("baseline")
            versus = f" (natural label {base['holdout_score']:.3f})" if base and base["holdout_score"] is not None else ""
            held = "n/a" if e["holdout_score"] is None else f"{e['holdout_score']:.3f}"
            typed = "" if e["roundtrip"] else " (its text does not re-tokenize to these tokens: apply it by its tokens)"
            typer.echo(f"category {e['category_id']}: {e['text']!r} {e['tokens']} train {e['train_score']:.3f}, "
                       f"holdout {held}{versus}{typed}")
        for item in document["skipped"]:
            named = f" ({item['name']!r})" if item["name"] else ""
            typer.echo(f"category {item['category_id']}{named}: skipped, {item['reason']}")
        typer.echo(f"results in {out / 'aliases.json'}; apply an alias with: mlx-alias segment --weights {weights} "
                   f"--image IMAGE --aliases {out / 'aliases.json'} --category ID")

    def interrupted() -> str:
        if (out / "run.json").is_file():
            return f"interrupted; the run in {out} can be resumed: run the same command with --resume"
        return "interrupted"

    run_guarded(action, interrupted)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder to create with everything the demo makes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model, the images and the search."),
    budget: int = typer.Option(1200, "--budget", min=1, help="Exact evaluations the search may spend."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """The whole job on an embedded default: tiny random SAM3, synthetic images, a planted prompt, a search."""

    def action() -> None:
        from mlx_alias.demo import demo as run

        def show(p) -> None:
            status(f"    {p.phase:9s} {p.evaluations}/{p.budget} evaluations, best train score {p.best:.3f}")

        def echo(line: str) -> None:
            end_status()
            typer.echo(line, err=True)

        summary = run(out, seed=seed, budget=budget, overwrite=overwrite, echo=echo, report=show)
        end_status()
        typer.echo(f"alias {summary['alias']!r} {summary['tokens']}: holdout score {summary['alias_holdout']:.3f} "
                   f"(the hidden prompt: {summary['hidden_holdout']:.3f}) after {summary['evaluations']} evaluations")
        typer.echo(f"results in {out / 'run' / 'aliases.json'}, report in {out / 'run' / 'report.md'}")

    run_guarded(action)


class Backend(str, Enum):
    mlx = "mlx"
    torch = "torch"


class SplitName(str, Enum):
    train = "train"
    holdout = "holdout"
    all = "all"


@app.command()
def evaluate(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    dataset: Path = typer.Option(..., "--dataset", help="COCO annotation file, or a folder holding one and the images."),
    aliases: Path = typer.Option(None, "--aliases", help="aliases.json from a search (scored with the natural labels "
                                 "and any --prompt, on each alias's own split, at its threshold)."),
    prompt: list[str] = typer.Option(None, "--prompt", help="A plain prompt to score (repeatable)."),
    split: SplitName = typer.Option(SplitName.holdout, "--split", help="Which images: the split's train, holdout, or all."),
    images: Path = typer.Option(None, "--images", help="Image folder, if not found beside the annotations."),
    categories: str = typer.Option(None, "--categories", help="With --prompt: comma-separated category ids (default: all)."),
    holdout: float = typer.Option(0.25, "--holdout", min=0.0, max=0.95, help="Holdout fraction, when the split is not in the alias file."),
    seed: int = typer.Option(0, "--seed", help="Split seed, when the split is not in the alias file."),
    threshold: float = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                    help="Official score above which a query is a predicted instance (default: the "
                                    "alias file's, else 0.5)."),
    batch: int = typer.Option(8, "--batch", min=0, help="(candidate, image) pairs per grounding call; 0 (MLX only): "
                              "as many as fit in half the free memory (measured)."),
    backend: Backend = typer.Option(Backend.mlx, "--backend", help="mlx, or torch (the reference; needs --checkpoint)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="With --backend torch: the PyTorch checkpoint."),
    cache: Path = typer.Option(Path.home() / ".cache" / "mlx-alias", "--cache", help="Image feature cache folder (MLX)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Score aliases (with the natural labels) and plain prompts on a dataset split."""

    def action() -> None:
        from mlx_alias.data.coco import load_dataset
        from mlx_alias.search.alias_file import load_alias_file
        from mlx_alias.search.cache import weights_fingerprint
        from mlx_alias.search.evaluate import check_aliases, evaluate as run
        from mlx_alias.search.objective import ObjectiveConfig, prepare_target
        from mlx_alias.segment import text_ids
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
            if alias_file.threshold is not None:
                objective = ObjectiveConfig(threshold=alias_file.threshold if threshold is None else threshold,
                                            negative_penalty=alias_file.negative_penalty)
            if alias_file.weights_sha256 not in (None, weights_fingerprint(weights, cache)):
                typer.echo(f"note: {weights} are not the weights the aliases were searched with; scores may differ",
                           err=True)
            if alias_file.annotations_sha256 not in (None, data.annotations_sha256):
                typer.echo(f"note: the annotations differ from those the aliases were searched on; "
                           "the recorded splits name image ids of those", err=True)
        if backend is Backend.torch:
            if checkpoint is None:
                raise ValueError("--backend torch needs --checkpoint (the PyTorch weights)")
            if not batch:
                raise ValueError("--batch 0 (measured from free memory) is for the MLX backend; give a number")
            from mlx_alias.reference.checkpoint import load_model as load_reference
            from mlx_alias.reference.scoring import TorchScorer

            reference, cfg = load_reference(checkpoint)
            size = cfg.vision.grid * 4  # the mask resolution: the neck's 4x level

            def make_scorer(cid: int, ids: list[int]):
                targets = [prepare_target(*_target(data, i, cid), size) for i in ids]
                return TorchScorer(reference, [data.images[i].path for i in ids], targets, objective, batch,
                                   cfg.vision.image_size)
        else:
            from mlx_alias.search.batching import pairs_for
            from mlx_alias.search.cache import FeatureCache
            from mlx_alias.search.task import scorer_for

            model = load_weights(weights)
            feature_cache = FeatureCache(model, weights, cache)
            pairs = batch or pairs_for(model, feature_cache, data)

            def make_scorer(cid: int, ids: list[int]):
                return scorer_for(model, feature_cache, data, cid, ids, objective, pairs)

        chosen = _categories(categories)
        entries = alias_file.aliases if alias_file else None
        rows = run(data, tokenizer, make_scorer, which=split.value, aliases=entries, prompts=prompt or None,
                   categories=chosen, holdout_fraction=holdout, seed=seed)
        for row in rows:
            if as_json:
                typer.echo(json.dumps({"category_id": row.category_id, "text": row.text, "tokens": row.tokens,
                                       "split": row.split, "score": row.score}))
            else:
                typer.echo(f"category {row.category_id} {row.split:7s} {row.score:7.4f}  {row.text!r}")

    run_guarded(action)


def _target(data, image_id: int, category_id: int):
    target = data.targets(image_id, category_id)
    return target.masks, target.crowd
