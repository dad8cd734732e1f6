"""``mlx-alias`` command line. Errors a user can cause are printed as one sentence with a
non-zero exit; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find token aliases that make SAM3 segment a concept (MLX port of SAM3).",
)
state = {"debug": False, "status_line": False}

# Errors that mean "bad input or environment", reported as sentences.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Preset(str, Enum):
    tiny = "tiny"
    full = "full"


class Format(str, Enum):
    sam3 = "sam3"
    hf = "hf"


def status(line: str) -> None:
    """Rewrite the one-line progress display on stderr."""
    typer.echo(f"\r{line}   ", nl=False, err=True)
    state["status_line"] = True


def end_status() -> None:
    if state["status_line"]:
        typer.echo("", err=True)
        state["status_line"] = False


def fail(message: str) -> None:
    end_status()
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def run_guarded(action) -> None:
    """Run ``action``; a user error becomes a one-sentence message and exit code 1."""
    if state["debug"]:
        action()
        return
    try:
        action()
    except USER_ERRORS as exc:
        text = str(exc).strip() or type(exc).__name__
        fail(text[0].lower() + text[1:] if text else text)
    except KeyboardInterrupt:
        fail("interrupted")


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    state["debug"] = debug


@app.command()
def convert(
    source: Path = typer.Argument(..., help="sam3.pt, a transformers model.safetensors, or a folder holding either."),
    out_dir: Path = typer.Argument(..., help="Folder to create with model.safetensors, config.json and the vocabulary."),
    dtype: Dtype = typer.Option(Dtype.float32, "--dtype", help="Weight dtype of the MLX file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it exists."),
) -> None:
    """Convert SAM3 weights (official or transformers layout) to MLX."""

    def action() -> None:
        from mlx_alias.convert.convert import convert as run

        report = run(source, out_dir, dtype.value, overwrite=overwrite)
        for line in report.summary():
            typer.echo(line)
        typer.echo(f"MLX weights in {out_dir}")

    run_guarded(action)


@app.command()
def init(
    out: Path = typer.Option(..., "--out", help="Folder to write the checkpoint into (created)."),
    preset: Preset = typer.Option(Preset.tiny, "--preset", help="tiny (tests, quick searches; scoring sharpened so prompts predict instances) or full (SAM3's sizes)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights."),
    fmt: Format = typer.Option(Format.sam3, "--format", help="sam3: official sam3.pt; hf: transformers model.safetensors."),
    device: str = typer.Option(None, "--device", help="torch device to initialise on (default: cuda, mps, then cpu)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write a seeded random-init SAM3 checkpoint through the PyTorch reference (needs the reference extra)."""

    def action() -> None:
        try:
            from mlx_alias.reference.build import build_model, parameter_count, sharpen_scores
            from mlx_alias.reference.checkpoint import save_checkpoint
        except ImportError as exc:
            raise ImportError(f"init needs the reference path (pip install 'mlx-alias[reference]'): {exc}") from exc
        from mlx_alias.config import PRESETS
        from mlx_alias.files import atomic_directory, check_target

        check_target(out, overwrite=overwrite)
        cfg = PRESETS[preset.value]()
        model = build_model(cfg, seed=seed, device=device)
        if preset is Preset.tiny:
            sharpen_scores(model)  # so that prompts predict instances at all (see sharpen_scores)
        with atomic_directory(out, overwrite=overwrite) as staging:
            path = save_checkpoint(model, cfg, staging, fmt.value)
        typer.echo(f"{preset.value} SAM3, seed {seed}, {parameter_count(model):,} parameters -> {out / path.name}")

    run_guarded(action)


def _load_weights(weights: Path):
    from mlx_alias.model.weights import load_model

    return load_model(weights)


@app.command()
def segment(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    image: Path = typer.Option(..., "--image", help="Any image Pillow reads (EXIF-rotated, 16-bit, palette, alpha ...)."),
    out: Path = typer.Option(..., "--out", help="Overlay PNG to write; the JSON goes beside it (same name, .json)."),
    prompt: str = typer.Option(None, "--prompt", help="Text prompt."),
    tokens: str = typer.Option(None, "--tokens", help="Raw content token ids instead of text, e.g. 1929,320."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Keep instances whose official score is above this."),
) -> None:
    """Segment every instance of a prompt in one image: overlay PNG + JSON (scores, boxes, RLE masks)."""

    def action() -> None:
        from mlx_alias.segment import make_prompt, segment as run

        chosen = make_prompt(prompt, tokens)
        result = run(_load_weights(weights), image, chosen, out, threshold)
        scores = ", ".join(f"{i['score']:.2f}" for i in result["instances"]) or "none"
        typer.echo(f"{len(result['instances'])} instance(s) above {threshold} (scores: {scores}) -> {out}, {out.with_suffix('.json')}")

    run_guarded(action)


@app.command()
def verify(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="The PyTorch checkpoint the weights were converted from."),
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    image: Path = typer.Option(..., "--image", help="Image to compare on."),
    prompt: str = typer.Option(..., "--prompt", help="Text prompt to compare on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the figures and `passed`)."),
    device: str = typer.Option(None, "--device", help="torch device for the reference (default: cuda, mps, then cpu)."),
) -> None:
    """Run the reference and the MLX model on the same input and report their differences; exit 1 if not within tolerance."""

    def action() -> None:
        try:
            from mlx_alias.reference.verify import verify as run
        except ImportError as exc:
            raise ImportError(f"verify needs the reference path (pip install 'mlx-alias[reference]'): {exc}") from exc
        report, details = run(checkpoint, weights, image, prompt, device)
        if as_json:
            typer.echo(json.dumps(report))
        else:
            for key, value in report.items():
                typer.echo(f"{key:24s} {value}")
            typer.echo(f"{'dtype':24s} {details['dtype']}")
            for key, value in details["seconds"].items():
                typer.echo(f"{key:24s} {value:.3f}")
            for line in details["failures"]:
                typer.echo(f"out of tolerance: {line}", err=True)
        if not report["passed"]:
            raise typer.Exit(code=1)

    run_guarded(action)


@app.command()
def plant(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    images: Path = typer.Option(..., "--images", help="Folder of images to annotate."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (annotations.json, images/, plant.json)."),
    prompt: str = typer.Option(None, "--prompt", help="The hidden prompt."),
    tokens: str = typer.Option(None, "--tokens", help="The hidden prompt as raw content token ids."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Official score above which a query is an instance."),
    max_instances: int = typer.Option(5, "--max-instances", min=1, help="At most this many instances per image, best first."),
    name: str = typer.Option(None, "--name", help="Category name to record (default: none, the prompt stays hidden)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Make a COCO dataset whose masks are the model's predictions for a hidden prompt (a search benchmark)."""

    def action() -> None:
        from mlx_alias.plant import plant as run
        from mlx_alias.segment import make_prompt

        chosen = make_prompt(prompt, tokens)
        report = run(_load_weights(weights), images, chosen, out, threshold=threshold,
                     max_instances=max_instances, name=name, overwrite=overwrite)
        typer.echo(f"{report.images} images, {report.positives} with instances, {report.instances} instances -> {out}")

    run_guarded(action)


def _categories(text: str | None, dataset) -> list[int]:
    if text is None:
        return sorted(dataset.categories)
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--categories must be comma-separated category ids, got {text!r}") from None


def _model_in(weights: Path, dtype: "Dtype | None"):
    import mlx.core as mx

    model = _load_weights(weights)
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
    length: int = typer.Option(4, "--length", min=1, max=30, help="Alias length in tokens."),
    budget: int = typer.Option(3000, "--budget", min=1, help="Exact evaluations (candidate x training image) per category."),
    holdout: float = typer.Option(0.25, "--holdout", min=0.0, max=0.95, help="Fraction of images held out per category."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of the search."),
    batch: int = typer.Option(8, "--batch", min=1, help="(candidate, image) pairs per grounding call."),
    dtype: Dtype = typer.Option(None, "--dtype", help="Compute dtype (default: the weights' dtype)."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Official score above which a query is a predicted instance."),
    roundtrip_only: bool = typer.Option(False, "--roundtrip-only", help="Only aliases whose text re-tokenizes to the same ids."),
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

        data = load_dataset(dataset, images)
        model = _model_in(weights, dtype)
        cfg = SearchConfig(length=length, budget=budget, holdout_fraction=holdout, seed=seed, pairs_per_batch=batch,
                           roundtrip_only=roundtrip_only, objective=ObjectiveConfig(threshold=threshold))
        feature_cache = FeatureCache(model, weights, cache)

        def show(p) -> None:
            status(f"{p.category} {p.phase:9s} {p.evaluations}/{p.budget} evaluations, best {p.best:.3f}")

        def echo(line: str) -> None:
            end_status()
            typer.echo(line, err=True)

        entries = run_search(model, feature_cache, data, out, cfg, _categories(categories, data), resume,
                             echo=echo, report=show)
        end_status()
        for e in entries:
            base = e.get("baseline")
            versus = f" (natural label {base['holdout_score']:.3f})" if base and base["holdout_score"] is not None else ""
            held = "n/a" if e["holdout_score"] is None else f"{e['holdout_score']:.3f}"
            typer.echo(f"category {e['category_id']}: {e['text']!r} {e['tokens']} train {e['train_score']:.3f}, "
                       f"holdout {held}{versus}")
        typer.echo(f"results in {out / 'aliases.json'}")

    run_guarded(action)


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
    aliases: Path = typer.Option(None, "--aliases", help="aliases.json from a search (scored with the natural labels)."),
    prompt: list[str] = typer.Option(None, "--prompt", help="A plain prompt to score instead (repeatable)."),
    split: SplitName = typer.Option(SplitName.holdout, "--split", help="Which images: the split's train, holdout, or all."),
    images: Path = typer.Option(None, "--images", help="Image folder, if not found beside the annotations."),
    categories: str = typer.Option(None, "--categories", help="With --prompt: comma-separated category ids (default: all)."),
    holdout: float = typer.Option(0.25, "--holdout", min=0.0, max=0.95, help="Holdout fraction, when the split is not in the alias file."),
    seed: int = typer.Option(0, "--seed", help="Split seed, when the split is not in the alias file."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Official score above which a query is a predicted instance."),
    batch: int = typer.Option(8, "--batch", min=1, help="(candidate, image) pairs per grounding call."),
    backend: Backend = typer.Option(Backend.mlx, "--backend", help="mlx, or torch (the reference; needs --checkpoint)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="With --backend torch: the PyTorch checkpoint."),
    cache: Path = typer.Option(Path.home() / ".cache" / "mlx-alias", "--cache", help="Image feature cache folder (MLX)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Score aliases (and the natural labels) or plain prompts on a dataset split."""

    def action() -> None:
        from mlx_alias.data.coco import load_dataset
        from mlx_alias.search.evaluate import evaluate as run, read_aliases
        from mlx_alias.search.objective import ObjectiveConfig, prepare_target
        from mlx_alias.tokenizer import load_tokenizer

        if (aliases is None) == (not prompt):
            raise ValueError("give either --aliases FILE or --prompt TEXT (repeatable), not both or neither")
        data = load_dataset(dataset, images)
        tokenizer = load_tokenizer()
        entries = read_aliases(aliases, data, tokenizer) if aliases else None
        objective = ObjectiveConfig(threshold=threshold)
        if backend is Backend.torch:
            if checkpoint is None:
                raise ValueError("--backend torch needs --checkpoint (the PyTorch weights)")
            from mlx_alias.reference.checkpoint import load_model as load_reference
            from mlx_alias.reference.scoring import TorchScorer

            reference, cfg = load_reference(checkpoint)
            size = cfg.vision.grid * 4  # the mask resolution: the neck's 4x level

            def make_scorer(cid: int, ids: list[int]):
                targets = [prepare_target(*_target(data, i, cid), size) for i in ids]
                return TorchScorer(reference, [data.images[i].path for i in ids], targets, objective, batch,
                                   cfg.vision.image_size)
        else:
            from mlx_alias.search.cache import FeatureCache
            from mlx_alias.search.task import scorer_for

            model = _load_weights(weights)
            feature_cache = FeatureCache(model, weights, cache)

            def make_scorer(cid: int, ids: list[int]):
                return scorer_for(model, feature_cache, data, cid, ids, objective, batch)

        chosen = _categories(categories, data) if categories else None
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
    return target.masks, target.ignore


def main() -> None:
    app()


if __name__ == "__main__":
    main()
