"""Small pieces every part uses: head splitting, attention over projected heads, the MLP."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def split_heads(x: mx.array, heads: int) -> mx.array:
    """[B, L, C] -> [B, heads, L, C / heads]."""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """[B, heads, L, D] -> [B, L, heads * D]."""
    batch, heads, length, dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * dim)


def attend(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | str | None = None) -> mx.array:
    """Scaled dot-product attention over [B, heads, L, D] inputs; a boolean ``mask`` is True
    where a query may attend (the opposite of torch's key_padding_mask)."""
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2, named as the transformers layout names it."""

    def __init__(self, dims: int, hidden: int, activation=nn.gelu):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden)
        self.fc2 = nn.Linear(hidden, dims)
        self._activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self._activation(self.fc1(x)))
