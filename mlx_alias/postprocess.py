"""From grounding outputs to instances at the original image size, as sam3's processor does:
keep queries whose official score passes a threshold, scale their boxes, upsample their mask
logits bilinearly and binarise at logit 0 (sigmoid 0.5)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import numpy as np

from .model.decoder import cxcywh_to_xyxy


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


def instances(scores: mx.array, boxes: mx.array, mask_logits: mx.array, height: int, width: int,
              threshold: float = 0.5) -> list[Instance]:
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
