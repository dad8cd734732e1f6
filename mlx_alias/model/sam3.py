"""SAM3's image model assembled from its parts, with the one flow every caller uses:
pixels -> ``encode_image`` (cache it); token ids or input embeddings -> text features;
``ground(image features, text features)`` -> scores, boxes and masks for a batch of prompts."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import mlx.core as mx
import mlx.nn as nn

from mlx_alias.config import ModelConfig

from .decoder import Decoder
from .encoder import FusionEncoder
from .geometry import GeometryEncoder, text_prompt
from .neck import Neck
from .scoring import DotProductScoring
from .segmentation import SegmentationHead
from .text import TextEncoder, TextFeatures, padding_of
from .vision import VisionTrunk


@dataclass
class ImageFeatures:
    levels: list[mx.array]  # kept neck levels [B, h, w, d_model], highest resolution first
    positions: list[mx.array]  # their sine position encodings [h, w, d_model]
    # What grounding computes before it reads the prompt, once per image (``Sam3.prepare``);
    # None: computed at every call.
    geometry: mx.array | None = None  # [B, 1, d_model] the text-only prompt's geometry token
    attended: mx.array | None = None  # [B, h * w, d_model] ``FusionEncoder.attend_image``
    skips: list[mx.array] | None = None  # ``SegmentationHead.skips``, per decoder stage

    def prepared(self) -> list[mx.array]:
        """What ``Sam3.prepare`` adds (to evaluate once)."""
        return [self.geometry, self.attended, *self.skips]


@dataclass
class Grounding:
    """Per-prompt outputs for B prompts and Q queries."""

    logits: mx.array  # [B, Q] sam3's pred_logits (squeezed)
    presence: mx.array  # [B] presence_logit_dec (squeezed)
    boxes: mx.array  # [B, Q, 4] cxcywh, normalised to the image
    masks: mx.array  # [B, Q, H, W] mask logits (288x288 at full size)
    semantic: mx.array  # [B, H, W] semantic segmentation logits

    @property
    def scores(self) -> mx.array:
        return official_scores(self.logits, self.presence)


@dataclass
class Detection:
    """``Sam3.detect``'s per-pair outputs, and what the segmentation head needs of them."""

    logits: mx.array  # [B, Q]
    presence: mx.array  # [B]
    boxes: mx.array  # [B, Q, 4]
    image_index: mx.array  # [B] the image of each pair
    memory: mx.array  # [B, tokens, d_model] the fusion encoder's output
    queries: mx.array  # [B, Q, d_model] the decoder's last-layer queries
    prompt: mx.array  # [B, P, d_model]
    padding: mx.array  # [B, P]

    @property
    def scores(self) -> mx.array:
        return official_scores(self.logits, self.presence)

    def take(self, rows: mx.array) -> Detection:
        return Detection(*(getattr(self, f.name)[rows] for f in fields(self)))


def official_scores(logits: mx.array, presence: mx.array) -> mx.array:
    """sam3's per-query score, sigmoid(logit) * sigmoid(presence), [B, Q]."""
    return mx.sigmoid(logits) * mx.sigmoid(presence)[:, None]


def _lowest_tokens(image: ImageFeatures) -> tuple[mx.array, mx.array]:
    """The last kept neck level as tokens [B, h * w, d] (row-major) and its positions [1, h * w, d]."""
    lowest, positions = image.levels[-1], image.positions[-1]
    height, width, d = lowest.shape[1:]
    return lowest.reshape(lowest.shape[0], height * width, d), positions.reshape(1, height * width, d)


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
        self.geometry_encoder = GeometryEncoder(cfg)
        self.detr_encoder = FusionEncoder(cfg)
        self.detr_decoder = Decoder(cfg)
        self.dot_product_scoring = DotProductScoring(cfg)
        self.mask_decoder = SegmentationHead(cfg)

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

    def ground(self, image: ImageFeatures, text: TextFeatures, image_index: mx.array | None = None) -> Grounding:
        """B prompts against cached image features: prompt b against image ``image_index[b]``
        (all against image 0 when not given). Differentiable end to end with respect to the
        text features, hence to the input embeddings."""
        detection = self.detect(image, text, image_index)
        masks, semantic = self.segment(image, detection)
        return Grounding(
            logits=detection.logits, presence=detection.presence, boxes=detection.boxes, masks=masks, semantic=semantic
        )

    def prepare(self, image: ImageFeatures) -> ImageFeatures:
        """The features with grounding's prompt-independent parts computed once per image: the
        geometry token, the fusion encoder's first self-attention (at full size about a tenth
        of the fusion encoder's work), which ``detect`` otherwise computes per prompt, and the
        segmentation head's image-only convolutions, which ``segment`` otherwise computes per
        call (once per image in it)."""
        tokens, positions = _lowest_tokens(image)
        return replace(
            image,
            geometry=self.geometry_encoder(tokens, positions),
            attended=self.detr_encoder.attend_image(tokens, positions),
            skips=self.mask_decoder.skips(image.levels),
        )

    def detect(self, image: ImageFeatures, text: TextFeatures, image_index: mx.array | None = None) -> Detection:
        """``ground`` up to the scores and boxes: the fusion encoder, decoder and scoring."""
        batch = text.memory.shape[0]
        if image_index is None:
            image_index = mx.zeros((batch,), dtype=mx.int32)
        height, width = image.levels[-1].shape[1:3]
        tokens, positions = _lowest_tokens(image)
        # The geometry token depends on the image only: once per image, then per prompt.
        geometry = self.geometry_encoder(tokens, positions) if image.geometry is None else image.geometry
        prompt, padding = text_prompt(text.memory, text.padding, geometry[image_index])
        if image.attended is None:
            attended = self.detr_encoder.attend_image(tokens[image_index], positions)
        else:
            attended = image.attended[image_index]
        memory = self.detr_encoder(attended, positions, prompt, padding)
        decoded = self.detr_decoder(memory, positions, (height, width), prompt, padding)
        logits = self.dot_product_scoring(decoded.queries, prompt, padding)
        return Detection(
            logits=logits[..., 0],
            presence=decoded.presence_logit[:, 0],
            boxes=decoded.boxes,
            image_index=image_index,
            memory=memory,
            queries=decoded.queries,
            prompt=prompt,
            padding=padding,
        )

    def segment(
        self, image: ImageFeatures, detection: Detection, rows: mx.array | None = None
    ) -> tuple[mx.array, mx.array]:
        """The segmentation head on a detection's pairs (only ``rows`` of them, when given: the
        search skips pairs whose masks its objective never reads) -> (mask logits [R, Q, H, W],
        semantic logits [R, H, W])."""
        d = detection if rows is None else detection.take(rows)
        skips = self.mask_decoder.skips(image.levels) if image.skips is None else image.skips
        return self.mask_decoder([skip[d.image_index] for skip in skips], d.memory, d.queries, d.prompt, d.padding)
