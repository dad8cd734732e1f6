"""``mlx-alias init``: a seeded random-init SAM3 checkpoint, made through the reference."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from .console import console


class Preset(str, Enum):
    tiny = "tiny"
    full = "full"


class Format(str, Enum):
    sam3 = "sam3"
    hf = "hf"


def command(
    out: Path = typer.Option(..., "--out", help="Folder to write the checkpoint into (created)."),
    preset: Preset = typer.Option(
        Preset.tiny,
        "--preset",
        help="tiny (tests, quick searches; scoring sharpened and a "
        "low-rank vocabulary, see docs/model.md) or full (SAM3's sizes).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights."),
    fmt: Format = typer.Option(
        Format.sam3, "--format", help="sam3: official sam3.pt; hf: transformers model.safetensors."
    ),
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

    console.guarded(action)
