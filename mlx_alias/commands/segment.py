"""``mlx-alias segment``: one image, one prompt (text, raw token ids, or an alias from a search)
-> an overlay PNG of the instances above a threshold and a JSON of their scores, boxes and RLE
masks at the image's own size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from .console import console, load_weights


def result_json(image: Path, rgb: np.ndarray, prompt, threshold: float, found: list) -> dict:
    from mlx_alias.prediction import rle
    from mlx_alias.tokenizer import load_tokenizer

    return {
        "image": str(image),
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        "prompt": prompt.text,
        "tokens": prompt.content,
        "decoded": load_tokenizer().decode(prompt.content),
        "threshold": threshold,
        "instances": [
            {"score": inst.score, "box_xyxy": [round(v, 2) for v in inst.box], "mask_rle": rle(inst.mask)}
            for inst in found
        ],
    }


def command(
    weights: Path = typer.Option(..., "--weights", help="Folder written by `mlx-alias convert`."),
    image: Path = typer.Option(
        ..., "--image", help="Any image Pillow reads (EXIF-rotated, 16-bit, palette, alpha ...)."
    ),
    out: Path = typer.Option(..., "--out", help="Overlay PNG to write; the JSON goes beside it (same name, .json)."),
    prompt: str = typer.Option(None, "--prompt", help="Text prompt."),
    tokens: str = typer.Option(None, "--tokens", help="Raw content token ids instead of text, e.g. 1929,320."),
    aliases: Path = typer.Option(
        None, "--aliases", help="aliases.json from a search: apply its alias (by its tokens)."
    ),
    category: int = typer.Option(None, "--category", help="With --aliases: the category whose alias to apply."),
    threshold: float = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Keep instances whose official score is above this (default: the alias "
        "file's threshold with --aliases, else 0.5).",
    ),
) -> None:
    """Segment every instance of a prompt in one image: overlay PNG + JSON (scores, boxes, RLE masks)."""

    def action() -> None:
        from mlx_alias.files import atomic_write, atomic_write_bytes
        from mlx_alias.image import load_image
        from mlx_alias.prediction import Prompt, make_prompt, overlay, predict
        from mlx_alias.search.alias_file import load_alias_file
        from mlx_alias.tokenizer import load_tokenizer

        cut = threshold
        if aliases is not None:
            if prompt is not None or tokens is not None:
                raise ValueError("give one of --prompt, --tokens and --aliases")
            alias_file = load_alias_file(aliases, load_tokenizer())
            chosen = Prompt(load_tokenizer().from_content_ids(alias_file.entry(category).tokens), None)
            cut = alias_file.threshold if cut is None else cut
        elif category is not None:
            raise ValueError("--category chooses an alias of --aliases FILE")
        else:
            chosen = make_prompt(prompt, tokens)
        cut = 0.5 if cut is None else cut
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out must name a .png file, got {out}")
        if not out.parent.is_dir():
            raise ValueError(f"the folder of --out does not exist: {out.parent}")
        rgb = load_image(image)
        found = predict(load_weights(weights), rgb, chosen, cut)
        result = result_json(image, rgb, chosen, cut, found)
        atomic_write(out, lambda tmp: overlay(rgb, found).save(tmp, format="PNG"))
        atomic_write_bytes(out.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode())
        scores = ", ".join(f"{i['score']:.2f}" for i in result["instances"]) or "none"
        typer.echo(f"{len(found)} instance(s) above {cut:g} (scores: {scores}) -> {out}, {out.with_suffix('.json')}")

    console.guarded(action)
