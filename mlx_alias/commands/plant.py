"""``mlx-alias plant``: a COCO dataset whose masks are what the model predicts for a hidden
prompt, the benchmark of the search itself."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import console, load_weights


def command(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    images: Path = typer.Option(..., "--images", help="Folder of images to annotate."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (annotations.json, images/, plant.json)."),
    prompt: str = typer.Option(None, "--prompt", help="The hidden prompt."),
    tokens: str = typer.Option(None, "--tokens", help="The hidden prompt as raw content token ids."),
    threshold: float = typer.Option(
        0.5, "--threshold", min=0.0, max=1.0, help="Official score above which a query is an instance."
    ),
    margin: float = typer.Option(
        0.0,
        "--margin",
        min=0.0,
        max=1.0,
        help="Queries within this much of the threshold become crowd regions, which no score counts.",
    ),
    max_instances: int = typer.Option(
        5, "--max-instances", min=1, help="At most this many instances per image, best first."
    ),
    name: str = typer.Option(None, "--name", help="Category name to record (default: none, the prompt stays hidden)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Make a COCO dataset whose masks are the model's predictions for a hidden prompt (a search benchmark)."""

    def action() -> None:
        from mlx_alias.plant import plant
        from mlx_alias.prediction import make_prompt

        chosen = make_prompt(prompt, tokens)
        report = plant(
            load_weights(weights),
            images,
            chosen,
            out,
            threshold=threshold,
            margin=margin,
            max_instances=max_instances,
            name=name,
            overwrite=overwrite,
        )
        crowds = (
            f", {report.crowd_regions} crowd regions ({report.crowd_only} images with only those)" if margin else ""
        )
        typer.echo(
            f"{report.images} images, {report.positives} with instances, {report.instances} instances{crowds} -> {out}"
        )

    console.guarded(action)
