"""``mlx-alias verify``: the reference and the MLX model on the same input, and how far apart."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .console import console


def command(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="The PyTorch checkpoint the weights were converted from."
    ),
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    image: Path = typer.Option(..., "--image", help="Image to compare on."),
    prompt: str = typer.Option(..., "--prompt", help="Text prompt to compare on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the figures and `passed`)."),
    device: str = typer.Option(None, "--device", help="torch device for the reference (default: cuda, mps, then cpu)."),
) -> None:
    """Run the reference and the MLX model on the same input and report their differences; exit 1 if not within tolerance."""

    def action() -> None:
        try:
            from mlx_alias.reference.verify import verify
        except ImportError as exc:
            raise ImportError(f"verify needs the reference path (pip install 'mlx-alias[reference]'): {exc}") from exc
        report, details = verify(checkpoint, weights, image, prompt, device)
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

    console.guarded(action)
