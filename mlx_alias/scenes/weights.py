"""The tiny SAM3 trained on the scene world, shipped with the package in the transformers
layout (``model.safetensors`` in float16 and its ``config.json``; ``PROVENANCE.json`` records
the command, seed and digest that made it). It converts like any checkpoint."""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "scenes-tiny"


def convert_shipped(out: Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """The shipped checkpoint converted to MLX weights in ``out``; returns ``out``."""
    from mlx_alias.convert.convert import convert

    convert(SHIPPED, out, dtype, overwrite=overwrite)
    return out
