"""The simple-FPN neck: the trunk's single map -> maps at scales 4, 2, 1 and 0.5, each
projected to d_model, with their sine position encodings. NHWC throughout."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import ModelConfig

from .common import Gelu
from .position import sine_position_encoding


class Upsample2x(nn.Module):
    """sam3's 2x2, stride-2 ConvTranspose2d. Its kernels never overlap, so it is one matmul
    and a pixel shuffle. ``weight`` is [out, 2, 2, in] (MLX conv layout)."""

    def __init__(self, dims_in: int, dims_out: int):
        super().__init__()
        self.weight = mx.zeros((dims_out, 2, 2, dims_in))
        self.bias = mx.zeros((dims_out,))

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, _ = x.shape
        dims_out = self.weight.shape[0]
        y = x @ self.weight.reshape(dims_out * 4, -1).T  # [B, H, W, out * 2 * 2]
        y = y.reshape(batch, height, width, dims_out, 2, 2).transpose(0, 1, 4, 2, 5, 3)
        return y.reshape(batch, 2 * height, 2 * width, dims_out) + self.bias


class FpnLevel(nn.Module):
    """One neck level: rescale (``scale_layers``), then a 1x1 and a 3x3 conv to d_model."""

    def __init__(self, scale: float, dims: int, d_model: int):
        super().__init__()
        if scale == 4.0:
            self.scale_layers = [Upsample2x(dims, dims // 2), Gelu(), Upsample2x(dims // 2, dims // 4)]
            dims //= 4
        elif scale == 2.0:
            self.scale_layers = [Upsample2x(dims, dims // 2)]
            dims //= 2
        elif scale == 1.0:
            self.scale_layers = []
        elif scale == 0.5:
            self.scale_layers = [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            raise ValueError(f"neck scale {scale} is not one of SAM3's (4, 2, 1, 0.5)")
        self.proj1 = nn.Conv2d(dims, d_model, kernel_size=1)
        self.proj2 = nn.Conv2d(d_model, d_model, kernel_size=3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.scale_layers:
            x = layer(x)
        return self.proj2(self.proj1(x))


class Neck(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fpn_layers = [FpnLevel(s, cfg.vision.width, cfg.detector.d_model) for s in cfg.detector.neck_scales]
        # sam3 discards the lowest-resolution levels (``scalp``): they are never computed here.
        self.kept = len(self.fpn_layers) - cfg.detector.neck_scalp
        self.d_model = cfg.detector.d_model

    def __call__(self, x: mx.array) -> tuple[list[mx.array], list[mx.array]]:
        """Trunk tokens [B, h, w, C] -> (kept levels [B, h_l, w_l, d_model], highest resolution
        first; their position encodings [h_l, w_l, d_model], the same for every image)."""
        levels = [level(x) for level in self.fpn_layers[: self.kept]]
        positions = [sine_position_encoding(m.shape[1], m.shape[2], self.d_model) for m in levels]
        return levels, positions
