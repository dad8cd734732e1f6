"""2-D axial rotary position embedding of the ViT, in real arithmetic.

sam3 stores complex ``freqs_cis`` tables and rotates (even, odd) channel pairs as complex
numbers. Here the same angles become cos/sin tables, computed once per (grid, head size,
scale) and cached, and the rotation is written out: (a + ib)(cos + i sin).
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np


@lru_cache(maxsize=None)
def rope_tables(size: int, head_dim: int, theta: float, scale: float) -> tuple[mx.array, mx.array]:
    """cos and sin tables [size * size, head_dim / 2] for a square grid of tokens in row-major
    order: the first half of each row rotates by x position, the second half by y.
    ``scale`` < 1 interpolates a table trained on a smaller grid (sam3's ``rope_interp``)."""
    # float32 throughout, as sam3 computes the angles, so that the tables match its own.
    exponents = np.arange(0, head_dim, 4, dtype=np.float32)[: head_dim // 4] / np.float32(head_dim)
    freqs = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    t = np.arange(size * size, dtype=np.float32)
    t_x = (t % size) * np.float32(scale)
    t_y = np.floor(t / size) * np.float32(scale)
    angles = np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1).astype(np.float32)
    return mx.array(np.cos(angles)), mx.array(np.sin(angles))


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate channel pairs (2j, 2j + 1) of x [B, heads, L, D] by the tables [L, D / 2], in
    float32 as sam3 does, returning x's dtype."""
    shape = x.shape
    pairs = x.astype(mx.float32).reshape(*shape[:-1], shape[-1] // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = mx.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return rotated.reshape(shape).astype(x.dtype)
