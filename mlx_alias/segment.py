"""``mlx-alias segment``: one image, one prompt (text or raw token ids) -> an overlay PNG of the
instances above a threshold and a JSON of their scores, boxes and RLE masks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .files import atomic_write, atomic_write_bytes
from .image import load_image, preprocess
from .model.sam3 import Sam3
from .postprocess import Instance, instances
from .tokenizer import CONTEXT_LENGTH, load_tokenizer

# Distinct, readable colours for up to ten instances, then repeating.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


@dataclass
class Prompt:
    ids: np.ndarray  # int32 [1, context]: start, content, end, padding
    text: str | None  # the text typed, or None for raw ids

    @property
    def content(self) -> list[int]:
        row = self.ids[0].tolist()
        return row[1: row.index(load_tokenizer().eot_id)]


def text_ids(text: str) -> np.ndarray:
    """A typed prompt's framed ids [1, context]; refused when blank or longer than SAM3 reads
    (the tokenizer would cut it silently, as sam3 does)."""
    tokenizer = load_tokenizer()
    if not text.strip():
        raise ValueError("the prompt is empty")
    count = len(tokenizer.encode(text))
    if count > CONTEXT_LENGTH - 2:
        raise ValueError(f"the prompt {text[:40]!r}{'...' if len(text) > 40 else ''} is {count} tokens long; "
                         f"SAM3 reads at most {CONTEXT_LENGTH - 2}")
    if count == 0:
        raise ValueError(f"the prompt {text!r} has no tokens after the tokenizer's cleaning")
    return tokenizer(text)


def make_prompt(text: str | None, tokens: str | None) -> Prompt:
    """Exactly one of a text prompt and comma-separated token ids."""
    if (text is None) == (tokens is None):
        raise ValueError("give either --prompt TEXT or --tokens ID,ID,... (exactly one)")
    tokenizer = load_tokenizer()
    if text is not None:
        return Prompt(text_ids(text), text)
    try:
        ids = [int(t) for t in tokens.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--tokens must be comma-separated integers, got {tokens!r}") from None
    return Prompt(tokenizer.from_content_ids(ids), None)


def run(model: Sam3, rgb: np.ndarray, prompt: Prompt, threshold: float) -> list[Instance]:
    pixels = mx.array(preprocess(rgb, model.cfg.vision.image_size)[None])
    grounding = model.ground(model.encode_image(pixels), model.encode_text(mx.array(prompt.ids)))
    height, width = rgb.shape[:2]
    return instances(grounding.scores[0], grounding.boxes[0], grounding.masks[0], height, width, threshold)


def overlay(rgb: np.ndarray, found: list[Instance]) -> Image.Image:
    """The image with each instance's mask tinted, its box outlined and its score written."""
    canvas = rgb.astype(np.float32)
    for i, inst in enumerate(found):
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        canvas[inst.mask] = 0.5 * canvas[inst.mask] + 0.5 * colour
    picture = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(rgb.shape[:2]) / 300))
    for i, inst in enumerate(found):
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle(inst.box, outline=colour, width=line)
        draw.text((inst.box[0] + line + 1, inst.box[1] + line + 1), f"{inst.score:.2f}", fill=colour)
    return picture


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def report(image: Path, rgb: np.ndarray, prompt: Prompt, threshold: float, found: list[Instance]) -> dict:
    tokenizer = load_tokenizer()
    return {
        "image": str(image),
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        "prompt": prompt.text,
        "tokens": prompt.content,
        "decoded": tokenizer.decode(prompt.content),
        "threshold": threshold,
        "instances": [
            {"score": inst.score, "box_xyxy": [round(v, 2) for v in inst.box], "mask_rle": rle(inst.mask)}
            for inst in found
        ],
    }


def segment(model: Sam3, image: Path, prompt: Prompt, out_png: Path, threshold: float = 0.5) -> dict:
    """Write ``out_png`` and the JSON beside it (same name, .json); return the JSON object."""
    if out_png.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out_png}")
    if not out_png.parent.is_dir():
        raise ValueError(f"the folder of --out does not exist: {out_png.parent}")
    rgb = load_image(image)
    found = run(model, rgb, prompt, threshold)
    result = report(image, rgb, prompt, threshold, found)
    atomic_write(out_png, lambda tmp: overlay(rgb, found).save(tmp, format="PNG"))
    atomic_write_bytes(out_png.with_suffix(".json"), (json.dumps(result, indent=1) + "\n").encode())
    return result
