"""The detector's encoder layer and the fusion encoder built from it.

sam3 uses one pre-norm ``TransformerEncoderLayer`` (relu FFN) in two places, with different
position-encoding options:

- the fusion encoder (image tokens attend to the prompt): positions added to the self-attention
  queries and keys (``pos_enc_at_attn``), none in the cross-attention;
- the geometry encoder (prompt tokens attend to the image): no positions in the self-attention,
  image positions added to the cross-attention keys (``pos_enc_at_cross_attn_keys``).

Cross-attention queries never get positions. Here the layer adds whichever positions it is
given, so each caller passes exactly the ones its sam3 options name.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import DetectorConfig, ModelConfig

from .common import Attention, Mlp


class EncoderLayer(nn.Module):
    """x + self-attention(norm1 x); x + cross-attention(norm2 x -> memory); x + FFN(norm3 x)."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg.d_model, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.cross_attn = Attention(cfg.d_model, cfg.heads)
        self.layer_norm3 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.d_model, cfg.ffn_dim, activation=nn.relu)

    def __call__(
        self,
        x: mx.array,
        memory: mx.array,
        *,
        positions: mx.array | None = None,
        memory_positions: mx.array | None = None,
        memory_padding: mx.array | None = None,
    ) -> mx.array:
        """Tokens x [B, L, d] attending to memory [B, M, d]. ``positions`` (broadcastable to
        x) join the self-attention queries and keys, ``memory_positions`` the cross-attention
        keys; ``memory_padding`` [B, M] is True where a memory token is padding. The tokens x
        are never padding here: image tokens, or the geometry encoder's one cls token."""
        return self.attend_memory(
            self.attend_self(x, positions), memory, memory_positions=memory_positions, memory_padding=memory_padding
        )

    def attend_self(self, x: mx.array, positions: mx.array | None = None) -> mx.array:
        """The self-attention half: x + self-attention(norm1 x), ``positions`` on queries and keys."""
        h = self.layer_norm1(x)
        q = h if positions is None else h + positions
        return x + self.self_attn(q, q, h)

    def attend_memory(
        self,
        x: mx.array,
        memory: mx.array,
        *,
        memory_positions: mx.array | None = None,
        memory_padding: mx.array | None = None,
    ) -> mx.array:
        """The rest: cross-attention to the memory, then the FFN."""
        h = self.layer_norm2(x)
        keys = memory if memory_positions is None else memory + memory_positions
        x = x + self.cross_attn(h, keys, memory, key_padding=memory_padding)
        return x + self.mlp(self.layer_norm3(x))


class FusionEncoder(nn.Module):
    """sam3's ``TransformerEncoderFusion`` as SAM3 builds it: one feature level, no pooled
    text added to the image (``add_pooled_text_to_img_feat=False``), no final norm.

    Its other outputs are not computed because they are its inputs unchanged: the position
    encoding it returns is ``image_positions``, its image padding mask is None and its
    ``memory_text`` is the prompt as given (later stages read the prompt, not an encoded one).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = [EncoderLayer(cfg.detector) for _ in range(cfg.detector.encoder_layers)]

    def attend_image(self, image_tokens: mx.array, image_positions: mx.array) -> mx.array:
        """The first layer's self-attention, which precedes any prompt: image tokens [B, HW, d]
        (row-major over the last kept neck level) and their position encodings [B or 1, HW, d]
        -> [B, HW, d]. It depends on the image only, so prompts on one image can share it."""
        return self.layers[0].attend_self(image_tokens, image_positions.astype(image_tokens.dtype))

    def __call__(
        self, attended: mx.array, image_positions: mx.array, prompt: mx.array, prompt_padding: mx.array
    ) -> mx.array:
        """``attend_image``'s output [B, HW, d], the position encodings [B or 1, HW, d], the
        prompt [B, Lp, d] and its padding [B, Lp] (True = padding) -> the encoder memory [B, HW, d]."""
        positions = image_positions.astype(attended.dtype)  # sine tables are fp32 always
        x = self.layers[0].attend_memory(attended, prompt, memory_padding=prompt_padding)
        for layer in self.layers[1:]:
            x = layer(x, prompt, positions=positions, memory_padding=prompt_padding)
        return x
