"""The visual-concept phase: a soft prompt steered towards what the target masks cover in the
image features, projected to real tokens and scored exactly.

The concept centre is the seed design's "concept center in embedding space": per training
image with instances, the mean of the image features (the neck level the fusion encoder reads,
d_model wide) inside the target masks minus their mean outside, averaged over those images.
The contrast removes what every location shares, leaving the direction that sets the masked
regions apart. The text side is the prompt as the fusion encoder receives it: the text
encoder's output after the resizer, mean-pooled over the prompt's positions as sam3's scoring
pools it. The phase maximises the cosine between the two. It needs no grounding, so a gradient
step costs one text-encoder pass; only its projections spend exact evaluations. In SAM3 the
vision and text towers come from a contrastively trained encoder (Perception Encoder), which is
what makes the direction meaningful; a random model has no such alignment.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from .phase import Candidate, SearchContext
from .soft import SoftConfig, SoftPromptPhase


def _bins(size: int, cells: int) -> np.ndarray:
    """[cells, size]: row i averages the pixels that fall in cell i (nearest-cell binning)."""
    which = np.arange(size) * cells // size
    weights = (which[None] == np.arange(cells)[:, None]).astype(np.float32)
    return weights / np.maximum(weights.sum(1, keepdims=True), 1.0)


def concept_centre(level: mx.array, masks: mx.array, valid: mx.array, keep: mx.array) -> mx.array:
    """Image features [N, h, w, d], target masks [N, M, H, W] with ``valid`` [N, M] and the
    non-ignored pixels ``keep`` [N, H, W] -> the concept centre [d]: the mean over images with an
    instance of (mean feature inside the masks - mean feature outside), each location weighted by
    the fraction of its pixels inside (outside). Raises if no image has an instance."""
    height, width = level.shape[1:3]
    rows, cols = _bins(masks.shape[2], height), _bins(masks.shape[3], width)
    union = mx.max(masks * valid[:, :, None, None].astype(masks.dtype), axis=1) * keep  # [N, H, W]
    inside = mx.array(rows) @ union @ mx.array(cols).T  # [N, h, w] fraction of each cell inside
    outside = mx.array(rows) @ keep @ mx.array(cols).T - inside
    features = level.astype(mx.float32)
    positive = np.array(valid.any(axis=1))
    if not positive.any():
        raise ValueError("the concept centre needs at least one image with an instance")

    def mean(weights: mx.array) -> mx.array:
        return (features * weights[..., None]).sum(axis=(1, 2)) / mx.maximum(weights.sum(axis=(1, 2)), 1e-6)[:, None]

    contrast = (mean(inside) - mean(outside))[mx.array(np.flatnonzero(positive))]
    return contrast.mean(axis=0)


class ConceptPhase(SoftPromptPhase):
    """``SoftPromptPhase`` with the concept alignment in place of the mask surrogate. Its
    default config starts from random allowed tokens: the concept does not depend on a start,
    so the best start given only sets the bar its projections must beat."""

    name = "concept"

    def __init__(self, ctx: SearchContext, config: SoftConfig, starts: list[Candidate] = ()):
        if config.images:
            raise ValueError("the concept phase's steps ground no image: its config takes no minibatch (images=0)")
        scorer = ctx.scorer
        dense = scorer.dense
        self._centre = {"centre": concept_centre(scorer.features.levels[-1], dense.masks, dense.valid, dense.keep)}
        super().__init__(ctx, config, starts)

    def _compiled_state(self) -> list[Any]:
        return [self.ctx.model, self._centre, self._frame]

    def _loss(self, vectors: mx.array) -> mx.array:
        embeddings = self._framed(vectors)
        text = self.ctx.model.encode_text_embeddings(embeddings, self._frame["padding"])
        valid = (~self._frame["padding"])[..., None].astype(mx.float32)
        pooled = ((text.memory.astype(mx.float32) * valid).sum(axis=1) / valid.sum(axis=1))[0]
        centre = self._centre["centre"]
        return -(pooled @ centre) / mx.maximum(mx.linalg.norm(pooled) * mx.linalg.norm(centre), 1e-12)
