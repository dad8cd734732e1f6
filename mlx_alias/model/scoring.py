"""Query scores: each decoder query's projection dotted with the projected, mean-pooled prompt."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import ModelConfig

from .decoder import HeadMlp

LOGIT_LIMIT = 12.0  # sam3 clamps the scores to +-12


class DotProductScoring(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        det = cfg.detector
        d = det.d_model
        self.text_mlp = HeadMlp(d, det.ffn_dim, d, 2)
        self.text_mlp_out_norm = nn.LayerNorm(d, eps=det.layer_norm_eps)
        self.text_proj = nn.Linear(d, d)
        self.query_proj = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d)

    def __call__(self, queries: mx.array, prompt: mx.array, prompt_padding: mx.array) -> mx.array:
        """queries [B, Q, d], prompt [B, Lp, d], prompt_padding [B, Lp] (True = padding)
        -> logits [B, Q, 1]."""
        prompt = self.text_mlp_out_norm(self.text_mlp(prompt) + prompt)
        valid = (~prompt_padding)[..., None].astype(prompt.dtype)
        pooled = (prompt * valid).sum(axis=1) / mx.maximum(valid.sum(axis=1), 1.0)  # [B, d]
        scores = self.query_proj(queries) @ self.text_proj(pooled)[:, :, None]
        return mx.clip(scores * self.scale, -LOGIT_LIMIT, LOGIT_LIMIT)
