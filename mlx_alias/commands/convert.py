"""``mlx-alias convert``: SAM3 weights (official or transformers layout) to MLX."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import Dtype, console


def command(
    source: Path = typer.Argument(..., help="sam3.pt, a transformers model.safetensors, or a folder holding either."),
    out_dir: Path = typer.Argument(
        ..., help="Folder to create with model.safetensors, config.json and the vocabulary."
    ),
    dtype: Dtype = typer.Option(Dtype.float32, "--dtype", help="Weight dtype of the MLX file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it exists."),
) -> None:
    """Convert SAM3 weights (official or transformers layout) to MLX."""

    def action() -> None:
        from mlx_alias.convert.convert import convert

        report = convert(source, out_dir, dtype.value, overwrite=overwrite)
        for line in report.summary():
            typer.echo(line)
        typer.echo(f"MLX weights in {out_dir}")

    console.guarded(action)
