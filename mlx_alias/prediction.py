"""Prediction and drawing: the prompt as ids, one image's instances as sam3's processor makes
them (queries whose official score passes a threshold, boxes scaled to the image, mask logits
upsampled bilinearly and cut at logit 0), and their overlay and RLE. ``segment``, the report,
``plant`` and the demo all predict through here."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .image import preprocess
from .model.decoder import cxcywh_to_xyxy
from .model.sam3 import Sam3
from .tokenizer import CONTEXT_LENGTH, load_tokenizer

# Distinct, readable colours for up to ten instances, then repeating.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


@dataclass
class Prompt:
    ids: np.ndarray  # int32 [1, context]: start, content, end, padding
    text: str | None  # the text typed, or None for raw ids

    @property
    def content(self) -> list[int]:
        row = self.ids[0].tolist()
        return row[1 : row.index(load_tokenizer().eot_id)]


def text_ids(text: str) -> np.ndarray:
    """A typed prompt's framed ids [1, context]; refused when blank or longer than SAM3 reads
    (the tokenizer would cut it silently, as sam3 does)."""
    tokenizer = load_tokenizer()
    if not text.strip():
        raise ValueError("the prompt is empty")
    count = len(tokenizer.encode(text))
    if count > CONTEXT_LENGTH - 2:
        raise ValueError(
            f"the prompt {text[:40]!r}{'...' if len(text) > 40 else ''} is {count} tokens long; "
            f"SAM3 reads at most {CONTEXT_LENGTH - 2}"
        )
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


@lru_cache(maxsize=64)
def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of torch's bilinear interpolation, align_corners=False,
    no antialiasing (``F.interpolate(mode="bilinear")``, which sam3 uses for masks)."""
    # torch's rounding: a float32 scale, the source position computed in double and stored as
    # float32 (``area_pixel_compute_source_index``), so that masks match sam3's to the last bit
    scale = np.float64(np.float32(size_in) / np.float32(size_out))
    src = np.maximum(scale * (np.arange(size_out) + 0.5) - 0.5, 0.0).astype(np.float32)
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = np.clip(src - low.astype(np.float32), 0, 1)
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return matrix


def resize_bilinear(x: mx.array, height: int, width: int) -> mx.array:
    """Resize the last two axes of ``x`` [..., H, W]; two matmuls, so it is differentiable
    and runs on every MLX backend."""
    rows = mx.array(_bilinear_matrix(x.shape[-2], height)).astype(x.dtype)
    cols = mx.array(_bilinear_matrix(x.shape[-1], width)).astype(x.dtype)
    return rows @ x @ cols.T


@dataclass
class Instance:
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original-image pixels
    mask: np.ndarray  # [H, W] bool at the original image size


def instances(
    scores: mx.array, boxes: mx.array, mask_logits: mx.array, height: int, width: int, threshold: float = 0.5
) -> list[Instance]:
    """One prompt's queries -> the instances whose score exceeds ``threshold``, best first.
    ``scores`` [Q], ``boxes`` [Q, 4] (cxcywh, normalised), ``mask_logits`` [Q, h, w]."""
    keep = np.flatnonzero(np.array(scores.astype(mx.float32)) > threshold)
    if keep.size == 0:
        return []
    keep = keep[np.argsort(-np.array(scores.astype(mx.float32))[keep], kind="stable")]
    index = mx.array(keep)
    scale = mx.array([width, height, width, height], dtype=mx.float32)
    pixels = np.array(cxcywh_to_xyxy(boxes[index].astype(mx.float32)) * scale)
    masks = np.array(resize_bilinear(mask_logits[index].astype(mx.float32), height, width) > 0)
    values = np.array(scores[index].astype(mx.float32))
    return [Instance(float(s), tuple(float(v) for v in b), m) for s, b, m in zip(values, pixels, masks)]


def predict(model: Sam3, rgb: np.ndarray, prompt: Prompt | np.ndarray, threshold: float = 0.5) -> list[Instance]:
    """The instances of ``prompt`` (a ``Prompt`` or framed ids [1, context]) in an RGB uint8
    image, best first, at the image's own size."""
    ids = prompt.ids if isinstance(prompt, Prompt) else prompt
    pixels = mx.array(preprocess(rgb, model.cfg.vision.image_size)[None])
    grounding = model.ground(model.encode_image(pixels), model.encode_text(mx.array(ids)))
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
