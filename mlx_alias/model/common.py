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


def attend_mask(key_padding: mx.array | None, bias: mx.array | None = None) -> mx.array | None:
    """An sdpa mask from a key padding mask [B, Lk] (True = padding, sam3's convention) and/or
    an additive bias [B, heads, Lq, Lk]: padded keys get -inf added to the bias."""
    if key_padding is None:
        return bias
    keep = ~key_padding[:, None, None, :]
    if bias is None:
        return keep
    return mx.where(keep, bias, mx.array(-mx.inf, dtype=bias.dtype))


class Attention(nn.Module):
    """nn.MultiheadAttention as the detector uses it (q/k/v/o projections with bias), batch
    first: queries [B, Lq, d], keys and values [B, Lk, d]."""

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.o_proj = nn.Linear(dims, dims)

    def project(self, queries: mx.array, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v projected and split into heads [B, heads, L, D]."""
        return (split_heads(self.q_proj(queries), self.heads), split_heads(self.k_proj(keys), self.heads),
                split_heads(self.v_proj(values), self.heads))

    def __call__(self, queries: mx.array, keys: mx.array, values: mx.array,
                 key_padding: mx.array | None = None, bias: mx.array | None = None) -> mx.array:
        q, k, v = self.project(queries, keys, values)
        return self.o_proj(merge_heads(attend(q, k, v, attend_mask(key_padding, bias))))
