"""The interface every search phase uses to judge prompts on a set of images: exact scores for
a batch of candidate token sequences, and the differentiable surrogate of a soft prompt.

Image features are computed once (see ``cache.py``) and passed in; candidates are grounded
against them in batches of (candidate, image) pairs. One *evaluation* is one candidate scored
on one image with the exact objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_alias.model.sam3 import ImageFeatures, Sam3
from mlx_alias.model.text import TextFeatures

from .objective import MaskTarget, ObjectiveConfig, SplitScore, aggregate, score_image, surrogate


@dataclass
class DenseTargets:
    """Targets of N images as arrays for the surrogate: instances padded to the most any image has."""

    masks: mx.array  # [N, M, h, w] float 0/1
    valid: mx.array  # [N, M] bool
    keep: mx.array  # [N, h, w] float, 0 on ignored (crowd) pixels

    @classmethod
    def of(cls, targets: list[MaskTarget]) -> DenseTargets:
        size = targets[0].ignore.shape
        most = max(1, max(t.masks.shape[0] for t in targets))
        masks = np.zeros((len(targets), most, *size), np.float32)
        valid = np.zeros((len(targets), most), bool)
        for i, t in enumerate(targets):
            masks[i, : len(t.masks)] = t.masks
            valid[i, : len(t.masks)] = True
        keep = np.stack([~t.ignore for t in targets]).astype(np.float32)
        return cls(mx.array(masks), mx.array(valid), mx.array(keep))


class ExactScorer:
    """The exact objective of candidates over fixed images, batched over (candidate, image)
    pairs; a backend supplies ``_encode`` (token rows -> text features) and ``_ground`` (a
    chunk of pairs -> official scores [P, Q] and, per pair, mask logits [Q, h, w] as numpy, or
    None where the objective does not read them: see ``needs_masks``)."""

    def __init__(self, targets: list[MaskTarget], config: ObjectiveConfig, pairs_per_batch: int):
        self.targets, self.config, self.pairs_per_batch = targets, config, pairs_per_batch
        self.evaluations = 0  # exact (candidate, image) scorings so far

    @property
    def images(self) -> int:
        return len(self.targets)

    def _encode(self, ids: np.ndarray):
        raise NotImplementedError

    def _ground(self, text, candidates: list[int], images: list[int]) -> tuple[np.ndarray, Sequence[np.ndarray | None]]:
        raise NotImplementedError

    def needs_masks(self, scores: np.ndarray, image: int) -> bool:
        """Whether ``score_image`` reads the masks of a pair: only on a positive image with at
        least one predicted instance (otherwise the quality is 0 or 1 from the scores alone)."""
        return self.targets[image].masks.shape[0] > 0 and bool((scores > self.config.threshold).any())

    def exact(self, ids: np.ndarray) -> list[SplitScore]:
        """Token id rows [C, context] -> each candidate's split score over all images."""
        text = self._encode(ids)
        pairs = [(c, i) for c in range(len(ids)) for i in range(self.images)]
        results: list[list] = [[] for _ in range(len(ids))]
        for start in range(0, len(pairs), self.pairs_per_batch):
            chunk = pairs[start: start + self.pairs_per_batch]
            scores, masks = self._ground(text, [c for c, _ in chunk], [i for _, i in chunk])
            for k, (c, i) in enumerate(chunk):
                results[c].append(score_image(scores[k], masks[k], self.targets[i], self.config))
        self.evaluations += len(pairs)
        return [aggregate(r, self.config) for r in results]


class Scorer(ExactScorer):
    """Scores prompts against fixed images (``features``, one per target) with one objective,
    in MLX; also the differentiable surrogate for the gradient phases."""

    def __init__(self, model: Sam3, features: ImageFeatures, targets: list[MaskTarget],
                 config: ObjectiveConfig = ObjectiveConfig(), pairs_per_batch: int = 8):
        if features.levels[0].shape[0] != len(targets):
            raise ValueError(f"{features.levels[0].shape[0]} images but {len(targets)} targets")
        super().__init__(targets, config, pairs_per_batch)
        self.model, self.features = model, features
        self.dense = DenseTargets.of(targets)

    def _encode(self, ids: np.ndarray) -> TextFeatures:
        return self.model.encode_text(mx.array(ids))

    def _ground(self, text: TextFeatures, candidates: list[int], images: list[int]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        which = mx.array(candidates)
        detection = self.model.detect(self.features, TextFeatures(text.memory[which], text.padding[which]),
                                      mx.array(images))
        scores = np.array(detection.scores.astype(mx.float32))
        # The segmentation head (about a third of grounding's work) runs only where it counts.
        needed = [k for k, image in enumerate(images) if self.needs_masks(scores[k], image)]
        masks: list[np.ndarray | None] = [None] * len(images)
        if needed:
            logits, _ = self.model.segment(self.features, detection, mx.array(needed))
            for k, row in zip(needed, np.array(logits.astype(mx.float32))):
                masks[k] = row
        return scores, masks

    def surrogate(self, embeddings: mx.array, padding: mx.array) -> mx.array:
        """One soft prompt ([1, L, width] input embeddings, [1, L] padding) -> the surrogate
        score over all images, differentiable with respect to ``embeddings``."""
        text = self.model.encode_text_embeddings(embeddings, padding)
        index = mx.arange(self.images)
        grounded = self.model.ground(
            self.features,
            TextFeatures(mx.repeat(text.memory, self.images, axis=0), mx.repeat(text.padding, self.images, axis=0)),
            index,
        )
        return surrogate(grounded.scores.astype(mx.float32), grounded.masks.astype(mx.float32),
                         self.dense.masks, self.dense.valid, self.dense.keep, self.config)
