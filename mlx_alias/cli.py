"""``mlx-alias`` command line. Errors a user can cause are printed as one sentence with a
non-zero exit; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def run_guarded(action, interrupted: Callable[[], str] = lambda: "interrupted") -> None:
    """Run ``action``; a user error becomes a one-sentence message and exit code 1, Ctrl-C the
    sentence ``interrupted()`` returns."""
    if state["debug"]:
        action()
        return
    try:
        action()
    except USER_ERRORS as exc:
        text = str(exc).strip() or type(exc).__name__
        fail(text[0].lower() + text[1:] if text else text)
    except KeyboardInterrupt:
        fail(interrupted())


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
    preset: Preset = typer.Option(Preset.tiny, "--preset", help="tiny (tests, quick searches; scoring sharpened and a low-rank vocabulary, see README) or full (SAM3's sizes)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights."),
    fmt: Format = typer.Option(Format.sam3, "--format", help="sam3: official sam3.pt; hf: transformers model.safetensors."),
    device: str = typer.Option(None, "--device", help="torch device to initialise on (default: cuda, mps, then cpu)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write a seeded random-init SAM3 checkpoint through the PyTorch reference (needs the reference extra)."""

    def action() -> None:
        try:
            from mlx_alias.reference.build import build_model, parameter_count, shape_tiny
            from mlx_alias.reference.checkpoint import save_checkpoint
        except ImportError as exc:
            raise ImportError(f"init needs the reference path (pip install 'mlx-alias[reference]'): {exc}") from exc
        from mlx_alias.config import PRESETS
        from mlx_alias.files import atomic_directory, check_target

        check_target(out, overwrite=overwrite)
        cfg = PRESETS[preset.value]()
        model = build_model(cfg, seed=seed, device=device)
        if preset is Preset.tiny:
            shape_tiny(model, seed)  # so that a search on it has something to find (see shape_tiny)
        with atomic_directory(out, overwrite=overwrite) as staging:
            path = save_checkpoint(model, cfg, staging, fmt.value)
        typer.echo(f"{preset.value} SAM3, seed {seed}, {parameter_count(model):,} parameters -> {out / path.name}")

    run_guarded(action)


def load_weights(weights: Path):
    from mlx_alias.model.weights import load_model

    return load_model(weights)


@app.command()
def segment(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    image: Path = typer.Option(..., "--image", help="Any image Pillow reads (EXIF-rotated, 16-bit, palette, alpha ...)."),
    out: Path = typer.Option(..., "--out", help="Overlay PNG to write; the JSON goes beside it (same name, .json)."),
    prompt: str = typer.Option(None, "--prompt", help="Text prompt."),
    tokens: str = typer.Option(None, "--tokens", help="Raw content token ids instead of text, e.g. 1929,320."),
    aliases: Path = typer.Option(None, "--aliases", help="aliases.json from a search: apply its alias (by its tokens)."),
    category: int = typer.Option(None, "--category", help="With --aliases: the category whose alias to apply."),
    threshold: float = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                    help="Keep instances whose official score is above this (default: the alias "
                                    "file's threshold with --aliases, else 0.5)."),
) -> None:
    """Segment every instance of a prompt in one image: overlay PNG + JSON (scores, boxes, RLE masks)."""

    def action() -> None:
        from mlx_alias.segment import Prompt, make_prompt, segment as run
        from mlx_alias.search.alias_file import load_alias_file
        from mlx_alias.tokenizer import load_tokenizer

        cut = threshold
        if aliases is not None:
            if prompt is not None or tokens is not None:
                raise ValueError("give one of --prompt, --tokens and --aliases")
            alias_file = load_alias_file(aliases, load_tokenizer())
            entry = alias_file.entry(category)
            chosen = Prompt(load_tokenizer().from_content_ids(entry["tokens"]), None)
            cut = alias_file.threshold if cut is None else cut
        elif category is not None:
            raise ValueError("--category chooses an alias of --aliases FILE")
        else:
            chosen = make_prompt(prompt, tokens)
        cut = 0.5 if cut is None else cut
        result = run(load_weights(weights), image, chosen, out, cut)
        scores = ", ".join(f"{i['score']:.2f}" for i in result["instances"]) or "none"
        typer.echo(f"{len(result['instances'])} instance(s) above {cut:g} (scores: {scores}) -> {out}, {out.with_suffix('.json')}")

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


from . import cli_search  # noqa: E402,F401  (registers search, evaluate, plant, demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
