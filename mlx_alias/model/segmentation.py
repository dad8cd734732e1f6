"""The segmentation head (sam3's ``UniversalSegmentationHead`` as SAM3 builds it): the encoder
memory attends to the prompt, replaces the lowest-resolution neck level, and a small FPN decoder
walks it up to the highest-resolution level; one mask per query is the dot product of the
query's mask embedding with every pixel's instance embedding. NHWC / batch first throughout.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_alias.config import ModelConfig

from .common import Attention


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """The source index of every output index for torch's ``F.interpolate(mode="nearest")``
    with an explicit size: floor(i * (in / out)), in float32 as torch computes it (a float64
    formula would differ for some ratios)."""
    scale = np.float32(size_in) / np.float32(size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


def resize_axis_nearest(x: mx.array, axis: int, size_out: int) -> mx.array:
    """Nearest-neighbour resize of one axis to ``size_out``. A whole-number upscale (SAM3's
    levels are always exactly 2x apart) is a broadcast and a reshape; any other ratio gathers
    the indices torch would read. Both are plain ops: differentiable on every MLX backend."""
    size_in = x.shape[axis]
    if size_out == size_in:
        return x
    index = nearest_indices(size_in, size_out)
    factor = size_out // size_in
    if size_out % size_in == 0 and np.array_equal(index, np.arange(size_out) // factor):
        shape = list(x.shape)
        x = mx.expand_dims(x, axis + 1)
        x = mx.broadcast_to(x, shape[: axis + 1] + [factor] + shape[axis + 1:])
        return x.reshape(shape[:axis] + [size_out] + shape[axis + 1:])
    return mx.take(x, mx.array(index, dtype=mx.int32), axis=axis)


def upsample_nearest(x: mx.array, height: int, width: int) -> mx.array:
    """[B, h, w, C] -> [B, height, width, C], as ``F.interpolate(size=(height, width))``."""
    return resize_axis_nearest(resize_axis_nearest(x, 1, height), 2, width)


class GroupNorm(nn.Module):
    """torch's GroupNorm (channels split into contiguous groups) on NHWC maps, with statistics
    in float32, two-pass, and summed per row first. One flat float32 sum over a group's
    H * W * C / groups values (2.6M at 288x288) drifts: ``nn.GroupNorm`` measured 1e-3
    relative error against float64 at that size on a map whose mean is off zero (1e-5 at
    64x64, failing parity); this measured 1.5e-7 and 9e-8."""

    def __init__(self, groups: int, dims: int, eps: float):
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, dims = x.shape
        grouped = x.astype(mx.float32).reshape(batch, height, width, self.groups, dims // self.groups)

        def group_mean(y: mx.array) -> mx.array:
            return mx.mean(mx.mean(y, axis=(2, 4), keepdims=True), axis=1, keepdims=True)

        centred = grouped - group_mean(grouped)
        normed = centred * mx.rsqrt(group_mean(mx.square(centred)) + self.eps)
        return normed.reshape(x.shape).astype(x.dtype) * self.weight + self.bias


class PixelDecoder(nn.Module):
    """From the lowest-resolution map up: add the next higher-resolution level to the nearest
    upsampled map, then 3x3 conv -> GroupNorm(8) -> ReLU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        det = cfg.detector
        # sam3 builds one conv per upsampling stage (3) but, with 3 kept levels, runs only the
        # first two; the third is still in the checkpoint, so it is held (and loaded) here too.
        stages = range(det.mask_upsampling_stages)
        self.conv_layers = [nn.Conv2d(det.d_model, det.d_model, kernel_size=3, padding=1) for _ in stages]
        # sam3: nn.GroupNorm(8, d_model), torch's default eps
        self.norms = [GroupNorm(8, det.d_model, eps=1e-5) for _ in stages]

    def __call__(self, levels: list[mx.array]) -> mx.array:
        """Maps [B, h_l, w_l, d], highest resolution first -> [B, H, W, d] at the first's size."""
        x = levels[-1]
        for conv, norm, level in zip(self.conv_layers, self.norms, reversed(levels[:-1])):
            x = level + upsample_nearest(x, level.shape[1], level.shape[2])
            x = nn.relu(norm(conv(x)))
        return x


class MaskEmbedder(nn.Module):
    """sam3's 3-layer MLP (ReLU between layers) from a query to its mask embedding."""

    def __init__(self, dims: int):
        super().__init__()
        self.layers = [nn.Linear(dims, dims) for _ in range(3)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers[:-1]:
            x = nn.relu(layer(x))
        return self.layers[-1](x)


class SegmentationHead(nn.Module):
    """Weights under "mask_decoder." (the transformers ``Sam3Model`` names)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        det = cfg.detector
        self.prompt_cross_attn_norm = nn.LayerNorm(det.d_model, eps=det.layer_norm_eps)
        self.prompt_cross_attn = Attention(det.d_model, det.heads)
        self.pixel_decoder = PixelDecoder(cfg)
        self.mask_embedder = MaskEmbedder(det.d_model)
        self.instance_projection = nn.Conv2d(det.d_model, det.d_model, kernel_size=1)
        self.semantic_projection = nn.Conv2d(det.d_model, 1, kernel_size=1)

    def __call__(self, levels: list[mx.array], memory: mx.array, queries: mx.array,
                 prompt: mx.array, prompt_padding: mx.array) -> tuple[mx.array, mx.array]:
        """Per-prompt inputs, one batch entry per prompt (the caller picks each prompt's image
        from the image features; sam3 does that inside with ``image_ids``):

        levels: the kept neck levels [B, h_l, w_l, d], highest resolution first, or [1, ...]
            for one image shared by all prompts (broadcast, as sam3 does); the lowest is only
            read for its size: the encoder memory takes its place (``use_encoder_inputs``).
        memory: the fusion encoder's output over the lowest level's tokens [B, h * w, d].
        queries: the last decoder layer's queries [B, Q, d].
        prompt, prompt_padding: the prompt tokens [B, Lp, d] and their mask [B, Lp] (True =
            padding).

        Returns mask logits [B, Q, H, W] and semantic logits [B, H, W], at the first level's
        size (288x288 at SAM3's full size).
        """
        attended = self.prompt_cross_attn_norm(memory)
        memory = memory + self.prompt_cross_attn(attended, prompt, prompt, key_padding=prompt_padding)

        _, height, width, dims = levels[-1].shape
        lowest = memory.reshape(memory.shape[0], height, width, dims)
        pixels = self.pixel_decoder([*levels[:-1], lowest])

        instances = self.instance_projection(pixels)  # [B, H, W, d]
        out_h, out_w = instances.shape[1:3]
        embedded = self.mask_embedder(queries)  # [B, Q, d]
        masks = embedded @ instances.reshape(instances.shape[0], out_h * out_w, dims).swapaxes(1, 2)
        masks = masks.reshape(masks.shape[0], -1, out_h, out_w)
        semantic = self.semantic_projection(pixels)[..., 0]
        return masks, semantic
