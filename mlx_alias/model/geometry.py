"""The geometry encoder on the text-only path, and the prompt it completes.

For a text prompt sam3 still runs its ``SequenceGeometryEncoder`` on a dummy geometric prompt
with zero boxes and zero points: the encoded sequence is then only its cls token, projected
(``final_proj`` + ``prompt_layer_norm``), passed through the encoder layers (cross-attending to
the last kept neck level with its positions) and normed. That one token, never padding, follows
the text features in the prompt the fusion encoder and the decoder attend to.

Box and point prompts are not ported (box pooling is an RoIAlign). Their parameters are
declared so that a checkpoint loads strictly; ``vision_layer_norm`` (sam3's ``img_pre_norm``)
too: sam3 applies it only to the map that box and point pooling sample, so the text-only path
never reads it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import ModelConfig

from .encoder import EncoderLayer

BOX_ROI_SIZE = 7  # sam3's default RoIAlign output size for box pooling
BOX_LABELS = 2  # positive and negative


class GeometryEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        det = cfg.detector
        d = det.d_model
        self.cls_embed = nn.Embedding(1, d)
        self.label_embed = nn.Embedding(BOX_LABELS, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, BOX_ROI_SIZE)
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.vision_layer_norm = nn.LayerNorm(d, eps=det.layer_norm_eps)
        self.final_proj = nn.Linear(d, d)
        self.prompt_layer_norm = nn.LayerNorm(d, eps=det.layer_norm_eps)
        self.layers = [EncoderLayer(det) for _ in range(det.geometry_layers)]
        self.output_layer_norm = nn.LayerNorm(d, eps=det.layer_norm_eps)

    def __call__(self, image_tokens: mx.array, image_positions: mx.array) -> mx.array:
        """Image tokens [B, HW, d] of the last kept neck level and their position encodings
        [B or 1, HW, d] -> the text-only prompt's geometry token [B, 1, d]. It depends on the
        image only: prompts on the same image can share one."""
        batch, _, d = image_tokens.shape
        positions = image_positions.astype(image_tokens.dtype)  # sine tables are fp32 always
        cls = mx.broadcast_to(self.cls_embed.weight[None], (batch, 1, d))
        x = self.prompt_layer_norm(self.final_proj(cls))
        for layer in self.layers:
            x = layer(x, image_tokens, memory_positions=positions)
        return self.output_layer_norm(x)


def text_prompt(text_memory: mx.array, text_padding: mx.array, geometry_tokens: mx.array) -> tuple[mx.array, mx.array]:
    """sam3's prompt for text-only grounding: the text features [B, L, d] as they are (padding
    stays in place), then the geometry token [B or 1, 1, d], which is never padding.
    Returns (prompt [B, L + 1, d], padding [B, L + 1], True = padding)."""
    batch = text_memory.shape[0]
    geometry = mx.broadcast_to(geometry_tokens, (batch, *geometry_tokens.shape[1:]))
    prompt = mx.concatenate([text_memory, geometry.astype(text_memory.dtype)], axis=1)
    padding = mx.concatenate([text_padding, mx.zeros((batch, geometry.shape[1]), dtype=mx.bool_)], axis=1)
    return prompt, padding
