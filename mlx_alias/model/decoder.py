"""The DETR decoder: object queries attend to each other, to the prompt and to the fused image
memory, and refine one box each, layer by layer; a presence token, attending alongside them,
says whether the prompt is in the image at all.

Inference only: dropout is off and sam3's DAC (duplicated one-to-many queries) is training-only,
so the queries are the ``num_queries`` one-to-one queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_alias.config import ModelConfig

from .common import Attention, Mlp

INVERSE_SIGMOID_EPS = 1e-3  # sam3's ``inverse_sigmoid`` default
SINE_TEMPERATURE = 10000.0
RPB_LOG_RANGE = 8.0  # box-to-grid distances are scaled to [-8, 8] before the log


@dataclass
class DecoderOutput:
    queries: mx.array  # [B, Q, d], last layer after the output norm: what scoring and masks read
    boxes: mx.array  # [B, Q, 4], cxcywh normalised to [0, 1]
    presence_logit: mx.array  # [B, 1], unclamped (sam3's clamp result is discarded)


def inverse_sigmoid(x: mx.array, eps: float = INVERSE_SIGMOID_EPS) -> mx.array:
    x = mx.clip(x, 0.0, 1.0)
    return mx.log(mx.maximum(x, eps) / mx.maximum(1 - x, eps))


def cxcywh_to_xyxy(boxes: mx.array) -> mx.array:
    center, size = boxes[..., :2], boxes[..., 2:]
    return mx.concatenate([center - 0.5 * size, center + 0.5 * size], axis=-1)


@lru_cache(maxsize=None)
def _sine_frequencies(feats: int) -> mx.array:
    """Channel pairs share a frequency: 10000^(2 * (j // 2) / feats)."""
    j = np.arange(feats, dtype=np.float32)
    return mx.array(np.float32(SINE_TEMPERATURE) ** (2 * np.floor(j / 2) / np.float32(feats)))


@lru_cache(maxsize=None)
def _grid_coordinates(length: int) -> mx.array:
    """Token coordinates along one side of the grid, normalised: i / length."""
    return mx.array(np.arange(length, dtype=np.float32) / np.float32(length))


def box_sine_embedding(boxes: mx.array, d_model: int) -> mx.array:
    """sam3's ``gen_sineembed_for_position`` of cxcywh boxes [..., 4] -> [..., 2 * d_model]:
    y, x, w, h each encoded with d_model / 2 interleaved sin/cos channels."""
    feats = d_model // 2
    ordered = mx.concatenate([boxes[..., 1:2], boxes[..., 0:1], boxes[..., 2:]], axis=-1)
    angles = (ordered * (2 * math.pi))[..., None] / _sine_frequencies(feats).astype(boxes.dtype)
    waves = mx.stack([mx.sin(angles[..., 0::2]), mx.cos(angles[..., 1::2])], axis=-1)
    return waves.reshape(*boxes.shape[:-1], 4 * feats)


def _log_scale(deltas: mx.array) -> mx.array:
    scaled = deltas * RPB_LOG_RANGE
    return mx.sign(scaled) * mx.log2(mx.abs(scaled) + 1.0) / math.log2(RPB_LOG_RANGE)


class HeadMlp(nn.Module):
    """sam3's ``MLP``: Linear layers ``layer1`` ... ``layerN`` with ReLU between them."""

    def __init__(self, dims_in: int, hidden: int, dims_out: int, depth: int):
        super().__init__()
        sizes = [dims_in] + [hidden] * (depth - 1) + [dims_out]
        for n in range(depth):
            setattr(self, f"layer{n + 1}", nn.Linear(sizes[n], sizes[n + 1]))
        self._depth = depth

    def __call__(self, x: mx.array) -> mx.array:
        for n in range(1, self._depth + 1):
            x = getattr(self, f"layer{n}")(x)
            if n < self._depth:
                x = nn.relu(x)
        return x


class DecoderLayer(nn.Module):
    """Post-norm: self-attention, text cross-attention, image cross-attention, MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        det = cfg.detector
        d, eps = det.d_model, det.layer_norm_eps
        self.self_attn = Attention(d, det.heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.text_cross_attn = Attention(d, det.heads)
        self.text_cross_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.vision_cross_attn = Attention(d, det.heads)
        self.vision_cross_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.mlp = Mlp(d, det.ffn_dim, nn.relu)
        self.mlp_layer_norm = nn.LayerNorm(d, eps=eps)

    def __call__(
        self,
        x: mx.array,
        positions: mx.array,
        prompt: mx.array,
        prompt_padding: mx.array,
        memory: mx.array,
        memory_keys: mx.array,
        box_bias: mx.array,
    ) -> mx.array:
        """x and positions [B, 1 + Q, d], the presence token first; memory_keys = memory + its
        positions; box_bias [B, heads, 1 + Q, H*W]."""
        q = x + positions
        x = self.self_attn_layer_norm(x + self.self_attn(q, q, x))
        attended = self.text_cross_attn(x + positions, prompt, prompt, key_padding=prompt_padding)
        x = self.text_cross_attn_layer_norm(x + attended)
        attended = self.vision_cross_attn(x + positions, memory_keys, memory, bias=box_bias)
        x = self.vision_cross_attn_layer_norm(x + attended)
        return self.mlp_layer_norm(x + self.mlp(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        det = cfg.detector
        d, eps = det.d_model, det.layer_norm_eps
        self.d_model = d
        self.layers = [DecoderLayer(cfg) for _ in range(det.decoder_layers)]
        self.query_embed = nn.Embedding(det.num_queries, d)
        self.reference_points = nn.Embedding(det.num_queries, 4)  # initial boxes, before sigmoid
        self.presence_token = nn.Embedding(1, d)
        self.output_layer_norm = nn.LayerNorm(d, eps=eps)
        self.presence_layer_norm = nn.LayerNorm(d, eps=eps)
        self.box_head = HeadMlp(d, d, 4, 3)
        self.presence_head = HeadMlp(d, d, 1, 3)
        self.ref_point_head = HeadMlp(2 * d, d, d, 2)
        self.box_rpb_embed_x = HeadMlp(2, d, det.heads, 2)
        self.box_rpb_embed_y = HeadMlp(2, d, det.heads, 2)

    def box_bias(self, boxes: mx.array, grid: tuple[int, int]) -> mx.array:
        """sam3's log-scale box relative position bias: for boxes [B, Q, 4] (cxcywh), a bias
        [B, heads, 1 + Q, H*W] on the image cross-attention from each token's signed, log-scaled
        distances to the box's edges; the presence token's row is zero."""
        height, width = grid
        batch, queries, _ = boxes.shape
        xyxy = cxcywh_to_xyxy(boxes)[:, :, None]  # [B, Q, 1, 4]
        to_y_edges = _grid_coordinates(height).astype(boxes.dtype)[:, None] - xyxy[..., 1::2]  # [B, Q, H, 2]
        to_x_edges = _grid_coordinates(width).astype(boxes.dtype)[:, None] - xyxy[..., 0::2]  # [B, Q, W, 2]
        # [B, heads, 1 + Q, H] and [B, heads, 1 + Q, W], zero-padded in front for the presence
        # token, so that the one [B, heads, 1 + Q, H, W] sum is made directly in its final layout.
        presence_row = [(0, 0), (0, 0), (1, 0), (0, 0)]
        bias_y = mx.pad(self.box_rpb_embed_y(_log_scale(to_y_edges)).transpose(0, 3, 1, 2), presence_row)
        bias_x = mx.pad(self.box_rpb_embed_x(_log_scale(to_x_edges)).transpose(0, 3, 1, 2), presence_row)
        return (bias_y[..., None] + bias_x[..., None, :]).reshape(batch, -1, 1 + queries, height * width)

    def __call__(
        self,
        memory: mx.array,
        memory_positions: mx.array,
        grid: tuple[int, int],
        prompt: mx.array,
        prompt_padding: mx.array,
    ) -> DecoderOutput:
        """memory [B, H*W, d] (the fusion encoder's output, row-major over the ``grid`` (H, W)),
        memory_positions [B or 1, H*W, d], prompt [B, Lp, d], prompt_padding [B, Lp] (True = padding)."""
        batch, count = memory.shape[0], self.query_embed.weight.shape[0]
        tokens = mx.concatenate([self.presence_token.weight, self.query_embed.weight])
        x = mx.broadcast_to(tokens[None], (batch, 1 + count, self.d_model))
        reference = mx.broadcast_to(mx.sigmoid(self.reference_points.weight)[None], (batch, count, 4))
        memory_keys = memory + memory_positions
        # The presence token (first) attends with the queries everywhere, with a zero position
        # and a zero box bias; it is a key and value only for the queries' self-attention.
        no_position = [(0, 0), (1, 0), (0, 0)]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # sam3 feeds each layer detached boxes (``new_reference_points.detach()``) but
            # predicts a layer's boxes from the undetached ones of the layer before
            # (``intermediate_ref_boxes``): the same values, different gradients.
            anchor = mx.stop_gradient(reference)
            positions = mx.pad(self.ref_point_head(box_sine_embedding(anchor, self.d_model)), no_position)
            x = layer(x, positions, prompt, prompt_padding, memory, memory_keys, self.box_bias(anchor, grid))
            queries = self.output_layer_norm(x[:, 1:])
            offsets = self.box_head(queries)
            if i < last:
                reference = mx.sigmoid(inverse_sigmoid(anchor) + offsets)
        boxes = mx.sigmoid(inverse_sigmoid(reference) + offsets)
        presence_logit = self.presence_head(self.presence_layer_norm(x[:, :1]))[..., 0]
        return DecoderOutput(queries=queries, boxes=boxes, presence_logit=presence_logit)
