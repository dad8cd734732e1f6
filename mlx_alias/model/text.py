"""The CLIP-style causal text encoder and SAM3's resizer to d_model.

Two entry points share one computation: token ids, and input embeddings (the soft-prompt
path). The encoder itself only masks causally; padding (id 0) is masked downstream, where the
detector attends to the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import TextConfig
from mlx_alias.tokenizer import PAD_ID

from .common import Mlp, attend, merge_heads, split_heads


@dataclass
class TextFeatures:
    memory: mx.array  # [B, L, d_model], after the resizer
    padding: mx.array  # [B, L] bool, True where the position is padding (sam3's convention)


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.width)


class TextAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def __call__(self, x: mx.array) -> mx.array:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(attend(q, k, v, mask="causal")))


class TextLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.self_attn = TextAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio))

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class TextStack(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layers = [TextLayer(cfg) for _ in range(cfg.layers)]


class TextModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = TextStack(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def __call__(self, inputs_embeds: mx.array) -> mx.array:
        """Input embeddings [B, L, width] (L <= context length) -> hidden states [B, L, width]."""
        length = inputs_embeds.shape[1]
        x = inputs_embeds + self.embeddings.position_embedding.weight[:length]
        for layer in self.encoder.layers:
            x = layer(x)
        return self.final_layer_norm(x)


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.text_model = TextModel(cfg)

    def token_embeddings(self, ids: mx.array) -> mx.array:
        return self.text_model.embeddings.token_embedding(ids)


def padding_of(ids: mx.array) -> mx.array:
    """sam3's text padding mask: id 0 is padding, wherever it stands."""
    return ids == PAD_ID
