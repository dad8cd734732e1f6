"""The ViTDet-style vision trunk: patch embedding, tiled absolute positions, windowed and
global attention blocks with 2-D RoPE. Activations are NHWC throughout."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import VisionConfig

from .common import Attention, Mlp, attend, merge_heads
from .rope import apply_rope, rope_tables


class PatchProjection(nn.Module):
    """sam3's bias-free patch conv, whose stride equals its kernel: a matmul over
    non-overlapping patches. ``weight`` is [width, patch, patch, 3] (MLX conv layout)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.weight = mx.zeros((cfg.width, cfg.patch_size, cfg.patch_size, 3))

    def __call__(self, pixels: mx.array) -> mx.array:
        batch, height, width, channels = pixels.shape
        patch = self.weight.shape[1]
        rows, cols = height // patch, width // patch
        pixels = pixels[:, : rows * patch, : cols * patch]  # a conv drops the remainder too
        patches = pixels.reshape(batch, rows, patch, cols, patch, channels).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(batch, rows, cols, patch * patch * channels)
        return patches @ self.weight.reshape(self.weight.shape[0], -1).T


class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.projection = PatchProjection(cfg)


class VisionEmbeddings(nn.Module):
    """Patch embedding plus the absolute position embedding, trained on the pretraining grid
    (without its never-read cls slot) and tiled, not interpolated, over the input grid."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embeddings = PatchEmbeddings(cfg)
        pretrain_grid = cfg.pretrain_image_size // cfg.patch_size
        self.position_embeddings = mx.zeros((1, pretrain_grid * pretrain_grid, cfg.width))

    def __call__(self, pixels: mx.array) -> mx.array:
        x = self.patch_embeddings.projection(pixels)
        rows, cols = x.shape[1:3]
        count, width = self.position_embeddings.shape[1:]
        side = round(count**0.5)
        grid = self.position_embeddings.reshape(side, side, width)
        tiled = mx.tile(grid, (-(-rows // side), -(-cols // side), 1))[:rows, :cols]
        return x + tiled


class VisionAttention(Attention):
    """Self-attention with RoPE applied to the projected queries and keys."""

    def __call__(self, x: mx.array, rope: tuple[mx.array, mx.array]) -> mx.array:
        q, k, v = self.project(x, x, x)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o_proj(merge_heads(attend(q, k, v)))


def window_partition(x: mx.array, window: int) -> mx.array:
    """[B, H, W, C] -> [B * windows, window * window, C], zero-padding H and W up to a multiple
    of the window as sam3 does (the padding takes part in attention, unmasked, as upstream)."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        x = mx.pad(x, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)])
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    x = x.reshape(batch, rows, window, cols, window, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch * rows * cols, window * window, channels)


def window_unpartition(windows: mx.array, window: int, height: int, width: int) -> mx.array:
    rows, cols = -(-height // window), -(-width // window)
    channels = windows.shape[-1]
    x = windows.reshape(-1, rows, cols, window, window, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, rows * window, cols * window, channels)[:, :height, :width]


class VisionLayer(nn.Module):
    """Pre-norm block; ``window`` > 0 attends within windows, 0 over the whole grid."""

    def __init__(self, cfg: VisionConfig, window: int):
        super().__init__()
        self.window = window
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attention = VisionAttention(cfg.width, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_hidden)

    def __call__(self, x: mx.array, rope: tuple[mx.array, mx.array]) -> mx.array:
        batch, height, width, channels = x.shape
        h = self.layer_norm1(x)
        if self.window:
            h = window_unpartition(self.attention(window_partition(h, self.window), rope), self.window, height, width)
        else:
            h = self.attention(h.reshape(batch, height * width, channels), rope).reshape(x.shape)
        x = x + h
        return x + self.mlp(self.layer_norm2(x))


class VisionTrunk(nn.Module):
    """Pixels [B, H, W, 3] (preprocessed) -> the last global block's tokens [B, H/14, W/14, C]."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.layers = [VisionLayer(cfg, 0 if i in cfg.global_blocks else cfg.window_size) for i in range(cfg.depth)]

    def rope(self, layer: VisionLayer, grid: int) -> tuple[mx.array, mx.array]:
        """A window block's table spans one window; a global block's spans the grid,
        interpolated from the window-sized table RoPE was trained with."""
        cfg = self.cfg
        head_dim = cfg.width // cfg.heads
        if layer.window:
            return rope_tables(layer.window, head_dim, cfg.rope_theta, 1.0)
        return rope_tables(grid, head_dim, cfg.rope_theta, cfg.window_size / grid)

    def __call__(self, pixels: mx.array) -> mx.array:
        x = self.layer_norm(self.embeddings(pixels))
        rows, cols = x.shape[1:3]
        if rows != cols:
            raise ValueError(f"the vision trunk needs a square token grid, got {rows}x{cols}")
        # sam3 returns the output of the last global block; blocks after it are never run.
        for layer in self.layers[: max(self.cfg.global_blocks) + 1]:
            x = layer(x, self.rope(layer, rows))
        return x
