"""Sine position encodings (DETR style) of feature maps, computed once per size."""

from __future__ import annotations

import math
from functools import lru_cache

import mlx.core as mx
import numpy as np

TEMPERATURE = 10000.0


def _frequencies(dims: int) -> np.ndarray:
    """dims/2 pairs share a frequency: position / 10000^(2 * (j // 2) / dims)."""
    j = np.arange(dims, dtype=np.float32)
    return (np.float32(TEMPERATURE) ** (2 * np.floor(j / 2) / np.float32(dims))).astype(np.float32)


def _interleave(angles: np.ndarray) -> np.ndarray:
    """sin of even channels, cos of odd channels, as sam3 stacks and flattens them."""
    out = np.empty_like(angles)
    out[..., 0::2] = np.sin(angles[..., 0::2])
    out[..., 1::2] = np.cos(angles[..., 1::2])
    return out


@lru_cache(maxsize=None)
def sine_position_encoding(height: int, width: int, d_model: int) -> mx.array:
    """sam3's ``PositionEmbeddingSine(normalize=True)`` of an H x W map as [H, W, d_model]:
    the first half of the channels encodes y, the second x, both normalised to (0, 2*pi]."""
    eps, scale = np.float32(1e-6), np.float32(2 * math.pi)
    y = np.arange(1, height + 1, dtype=np.float32) / (np.float32(height) + eps) * scale
    x = np.arange(1, width + 1, dtype=np.float32) / (np.float32(width) + eps) * scale
    freqs = _frequencies(d_model // 2)
    pos_y = _interleave(y[:, None] / freqs)  # [H, d/2]
    pos_x = _interleave(x[:, None] / freqs)  # [W, d/2]
    grid = np.concatenate(
        [
            np.broadcast_to(pos_y[:, None], (height, width, d_model // 2)),
            np.broadcast_to(pos_x[None, :], (height, width, d_model // 2)),
        ],
        axis=-1,
    )
    return mx.array(grid.astype(np.float32))
