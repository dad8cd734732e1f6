"""SAM3's image model assembled from its parts, with the one flow every caller uses:
pixels -> ``encode_image`` (cache it); token ids or input embeddings -> text features."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import ModelConfig

from .neck import Neck
from .text import TextEncoder, TextFeatures, padding_of
from .vision import VisionTrunk


@dataclass
class ImageFeatures:
    levels: list[mx.array]  # kept neck levels [B, h, w, d_model], highest resolution first
    positions: list[mx.array]  # their sine position encodings [h, w, d_model]


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = VisionTrunk(cfg.vision)
        self.neck = Neck(cfg)

    def __call__(self, pixels: mx.array) -> ImageFeatures:
        return ImageFeatures(*self.neck(self.backbone(pixels)))


class Sam3(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = VisionEncoder(cfg)
        self.text_encoder = TextEncoder(cfg.text)
        # sam3's "resizer": text width -> d_model (the transformers layout's text_projection)
        self.text_projection = nn.Linear(cfg.text.width, cfg.detector.d_model)

    @property
    def dtype(self) -> mx.Dtype:
        return self.text_projection.weight.dtype

    def encode_image(self, pixels: mx.array) -> ImageFeatures:
        """Preprocessed images [B, S, S, 3] (``mlx_alias.image.preprocess``) -> features."""
        return self.vision_encoder(pixels.astype(self.dtype))

    def token_embeddings(self, ids: mx.array) -> mx.array:
        """Token ids [B, L] -> the text encoder's input embeddings [B, L, width]."""
        return self.text_encoder.token_embeddings(ids)

    def encode_text_embeddings(self, embeddings: mx.array, padding: mx.array) -> TextFeatures:
        """Input embeddings [B, L, width] (soft prompts) and their padding mask [B, L] (True =
        padding) -> text features. Differentiable with respect to ``embeddings``."""
        hidden = self.text_encoder.text_model(embeddings)
        return TextFeatures(memory=self.text_projection(hidden), padding=padding)

    def encode_text(self, ids: mx.array) -> TextFeatures:
        """Token ids [B, L] (start, content, end, zero padding; ``mlx_alias.tokenizer``)."""
        return self.encode_text_embeddings(self.token_embeddings(ids), padding_of(ids))
