"""The segmentation head (sam3's ``UniversalSegmentationHead`` as SAM3 builds it): the encoder
memory attends to the prompt, replaces the lowest-resolution neck level, and a small FPN decoder
walks it up to the highest-resolution level; one mask per query is the dot product of the
query's mask embedding with every pixel's instance embedding. NHWC / batch first throughout.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import ModelConfig

from .common import Attention

# A 3x3 convolution of a 2x nearest-upsampled map, seen from the map before upsampling: output
# row 2i + phase reads input row i + offset through the kernel rows listed (row 2i reads rows
# i - 1 and i, i twice; row 2i + 1 reads i twice and i + 1). Columns alike.
_UPSAMPLED_TAPS = (((-1, (0,)), (0, (1, 2))), ((0, (0, 1)), (1, (2,))))


def conv3x3_upsampled(x: mx.array, weight: mx.array) -> mx.array:
    """``conv2d(upsample_nearest_2x(x), weight, padding=1)`` without bias: [B, h, w, C] ->
    [B, 2h, 2w, O], for weights [O, 3, 3, C]. Each of the four output phases is a 2x2
    convolution of ``x`` itself with summed taps, so the upsampled map is never built and each
    input pixel costs 16 C x O products instead of the 36 of its four output pixels (2.25x
    fewer FLOPs). Plain ops: differentiable on every MLX backend."""
    batch, height, width, _ = x.shape
    padded = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    rows = []
    for row_taps in _UPSAMPLED_TAPS:
        phases = []
        for column_taps in _UPSAMPLED_TAPS:
            shifted, kernels = [], []
            for dr, kernel_rows in row_taps:
                for dc, kernel_columns in column_taps:
                    shifted.append(padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width])
                    kernels.append(sum(weight[:, r, c] for r in kernel_rows for c in kernel_columns))
            # one [B h w, 4C] @ [4C, O] product per phase
            phases.append(mx.concatenate(shifted, axis=-1) @ mx.concatenate(kernels, axis=-1).T)
        rows.append(mx.stack(phases, axis=3))  # [B, h, w, column phase, O]
    return mx.stack(rows, axis=2).reshape(batch, 2 * height, 2 * width, weight.shape[0])


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
    upsampled map (SAM3's levels are exactly 2x apart), then 3x3 conv -> GroupNorm(8) -> ReLU.
    The conv is linear: conv(level + up(x)) = conv(level) + conv(up(x)). The first term depends
    on the image alone (``skips``, computed once per image), the second is computed at x's own
    resolution (``conv3x3_upsampled``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        det = cfg.detector
        # sam3 builds one conv per upsampling stage (3) but, with 3 kept levels, runs only the
        # first two; the third is still in the checkpoint, so it is held (and loaded) here too.
        stages = range(det.mask_upsampling_stages)
        self.conv_layers = [nn.Conv2d(det.d_model, det.d_model, kernel_size=3, padding=1) for _ in stages]
        # sam3: nn.GroupNorm(8, d_model), torch's default eps
        self.norms = [GroupNorm(8, det.d_model, eps=1e-5) for _ in stages]

    def skips(self, levels: list[mx.array]) -> list[mx.array]:
        """The levels each stage adds [B, h_l, w_l, d], highest resolution first -> the stages'
        image-only terms conv(level) + bias, in stage order (lowest resolution first)."""
        return [conv(level) for conv, level in zip(self.conv_layers, reversed(levels))]

    def __call__(self, skips: list[mx.array], x: mx.array) -> mx.array:
        """``skips`` (``PixelDecoder.skips``) and the lowest map [B, h, w, d] -> [B, H, W, d] at
        the last skip's size."""
        for conv, norm, skip in zip(self.conv_layers, self.norms, skips):
            if skip.shape[1:3] != (2 * x.shape[1], 2 * x.shape[2]):
                raise ValueError(f"pixel decoder levels must be 2x apart, got {x.shape[1:3]} then {skip.shape[1:3]}")
            x = nn.relu(norm(skip + conv3x3_upsampled(x, conv.weight)))
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

    def skips(self, levels: list[mx.array]) -> list[mx.array]:
        """The image-only part of the head (``PixelDecoder.skips``) from all kept neck levels
        [B, h_l, w_l, d], highest resolution first: once per image, then indexed per prompt."""
        return self.pixel_decoder.skips(levels[:-1])

    def __call__(
        self, skips: list[mx.array], memory: mx.array, queries: mx.array, prompt: mx.array, prompt_padding: mx.array
    ) -> tuple[mx.array, mx.array]:
        """Per-prompt inputs, one batch entry per prompt (the caller picks each prompt's image;
        sam3 does that inside with ``image_ids``):

        skips: ``skips`` of each prompt's image, [B, ...] or [1, ...] for one image shared by
            all prompts (broadcast, as sam3 does). The lowest neck level is not among them: the
            encoder memory takes its place (``use_encoder_inputs``), at half the first skip's size.
        memory: the fusion encoder's output over the lowest level's tokens [B, h * w, d].
        queries: the last decoder layer's queries [B, Q, d].
        prompt, prompt_padding: the prompt tokens [B, Lp, d] and their mask [B, Lp] (True =
            padding).

        Returns mask logits [B, Q, H, W] and semantic logits [B, H, W], at the last skip's size
        (288x288 at SAM3's full size).
        """
        attended = self.prompt_cross_attn_norm(memory)
        memory = memory + self.prompt_cross_attn(attended, prompt, prompt, key_padding=prompt_padding)

        batch, dims = memory.shape[0], memory.shape[-1]
        lowest = memory.reshape(batch, skips[0].shape[1] // 2, skips[0].shape[2] // 2, dims)
        pixels = self.pixel_decoder(skips, lowest)
        out_h, out_w = pixels.shape[1:3]

        # The instance projection is a 1x1 conv, linear per pixel, so it moves to the query side:
        # e . (W p + b) = (e W) . p + e . b, a [Q, d] x [d, d] product instead of [H W, d] x [d, d].
        embedded = self.mask_embedder(queries)  # [B, Q, d]
        projection = self.instance_projection.weight.reshape(dims, dims)  # [out, in]
        masks = (embedded @ projection) @ pixels.reshape(batch, out_h * out_w, dims).swapaxes(1, 2)
        masks = masks + (embedded @ self.instance_projection.bias)[..., None]
        masks = masks.reshape(batch, -1, out_h, out_w)
        semantic = self.semantic_projection(pixels)[..., 0]
        return masks, semantic
