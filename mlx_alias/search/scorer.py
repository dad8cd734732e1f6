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

from mlx_alias.model.sam3 import Grounding, ImageFeatures, Sam3
from mlx_alias.model.text import TextFeatures
from mlx_alias.tokenizer import PAD_ID

from .objective import (
    ImageResult,
    MaskTarget,
    ObjectiveConfig,
    SplitScore,
    aggregate,
    calibrate,
    score_image,
    surrogate,
)


@dataclass
class DenseTargets:
    """Targets of N images as arrays for the surrogate: instances padded to the most any image has."""

    masks: mx.array  # [N, M, h, w] float 0/1
    valid: mx.array  # [N, M] bool
    keep: mx.array  # [N, h, w] float, 0 on ignored pixels (``MaskTarget.ignored``)
    crowd: mx.array  # [N, h, w] float, 1 in crowd regions

    @classmethod
    def of(cls, targets: list[MaskTarget]) -> DenseTargets:
        size = targets[0].crowd.shape
        most = max(1, max(t.masks.shape[0] for t in targets))
        masks = np.zeros((len(targets), most, *size), np.float32)
        valid = np.zeros((len(targets), most), bool)
        for i, t in enumerate(targets):
            masks[i, : len(t.masks)] = t.masks
            valid[i, : len(t.masks)] = True
        keep = np.stack([~t.ignored() for t in targets]).astype(np.float32)
        crowd = np.stack([t.crowd for t in targets]).astype(np.float32)
        return cls(mx.array(masks), mx.array(valid), mx.array(keep), mx.array(crowd))

    def subset(self, images: mx.array) -> DenseTargets:
        """The targets of these images (an index array), in its order."""
        return DenseTargets(self.masks[images], self.valid[images], self.keep[images], self.crowd[images])


@dataclass(frozen=True)
class Pruned:
    """A raced candidate dropped early: its exact score is at most ``bound``."""

    bound: float


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

    def _score_pairs(self, text, pairs: list[tuple[int, int]]) -> list[ImageResult]:
        """Per-image results of (candidate, image) pairs, grounded ``pairs_per_batch`` at a time."""
        results = []
        for start in range(0, len(pairs), self.pairs_per_batch):
            chunk = pairs[start : start + self.pairs_per_batch]
            scores, masks = self._ground(text, [c for c, _ in chunk], [i for _, i in chunk])
            results += [
                score_image(scores[k], masks[k], self.targets[i], self.config) for k, (_, i) in enumerate(chunk)
            ]
        self.evaluations += len(pairs)
        return results

    def exact(self, ids: np.ndarray) -> list[SplitScore]:
        """Token id rows [C, context] -> each candidate's split score over all images."""
        text = self._encode(ids)
        pairs = [(c, i) for c in range(len(ids)) for i in range(self.images)]
        results: list[list[ImageResult]] = [[] for _ in range(len(ids))]
        for (c, _), result in zip(pairs, self._score_pairs(text, pairs)):
            results[c].append(result)
        return [aggregate(r, self.config) for r in results]

    def screen(self, ids: np.ndarray, images: list[int]) -> np.ndarray:
        """Token id rows [C, context] -> [C] each candidate's mean quality on ``images`` alone
        (positive images: the part of the score a candidate can earn there); ``len(images)``
        evaluations a candidate."""
        pairs = [(c, i) for c in range(len(ids)) for i in images]
        quality = np.array([r.quality for r in self._score_pairs(self._encode(ids), pairs)])
        return quality.reshape(len(ids), len(images)).mean(axis=1)

    def upper_bound(self, results: dict[int, ImageResult]) -> float:
        """The highest split score a candidate can still reach given its results on some images:
        every image not yet scored perfect (quality 1 on a positive, no prediction on a negative)."""
        positives = [i for i, t in enumerate(self.targets) if t.masks.shape[0] > 0]
        negatives = self.images - len(positives)
        quality = (
            sum(results[i].quality if i in results else 1.0 for i in positives) / len(positives) if positives else 0.0
        )
        false_positives = sum(r.predicted > 0 for r in results.values() if r.instances == 0)
        return quality - self.config.negative_penalty * false_positives / max(negatives, 1)

    def race(self, ids: np.ndarray, bar: float) -> list[SplitScore | Pruned]:
        """Like ``exact`` for the candidates that score above ``bar``; a candidate is dropped
        (``Pruned``, with its bound) as soon as its ``upper_bound`` shows it cannot. Images are
        scored in rounds, positives first (where most candidates fall short), each round at
        least ``pairs_per_batch`` pairs; only the pairs scored count as evaluations. A survivor's
        score equals ``exact``'s to the bit (aggregated in image order)."""
        text = self._encode(ids)
        order = sorted(range(self.images), key=lambda i: self.targets[i].masks.shape[0] == 0)
        results: list[dict[int, ImageResult]] = [{} for _ in range(len(ids))]
        outcome: list[SplitScore | Pruned | None] = [None] * len(ids)
        alive, done = list(range(len(ids))), 0
        while alive:
            images = order[done : done + max(1, -(-self.pairs_per_batch // len(alive)))]
            pairs = [(c, i) for c in alive for i in images]
            for (c, i), result in zip(pairs, self._score_pairs(text, pairs)):
                results[c][i] = result
            done += len(images)
            if done == self.images:
                break
            for c in alive:
                bound = self.upper_bound(results[c])
                if bound <= bar:
                    outcome[c] = Pruned(bound)
            alive = [c for c in alive if outcome[c] is None]
        for c in alive:
            outcome[c] = aggregate([results[c][i] for i in range(self.images)], self.config)
        return outcome


def encode_candidates(model: Sam3, ids: np.ndarray) -> TextFeatures:
    """Token id rows [C, context] -> text features. Padding columns after every row's end token
    are cut: the text encoder is causal and every attention over the text masks padding, so
    they change no score, and a 4-token alias runs on 6 positions instead of the context's 32."""
    used = np.flatnonzero((ids != PAD_ID).any(axis=0))
    return model.encode_text(mx.array(ids[:, : int(used[-1]) + 1]))


class Scorer(ExactScorer):
    """Scores prompts against fixed images (``features``, one per target) with one objective,
    in MLX; also the differentiable surrogate for the gradient phases."""

    def __init__(
        self,
        model: Sam3,
        features: ImageFeatures,
        targets: list[MaskTarget],
        config: ObjectiveConfig = ObjectiveConfig(),
        pairs_per_batch: int = 8,
        prepare: bool = True,
    ):
        """``prepare``: compute grounding's prompt-free parts once per image (``Sam3.prepare``)
        now; without it every grounding call computes what it needs of them."""
        if features.levels[0].shape[0] != len(targets):
            raise ValueError(f"{features.levels[0].shape[0]} images but {len(targets)} targets")
        super().__init__(targets, config, pairs_per_batch)
        self.model = model
        self.features = features
        if prepare:
            self.features = model.prepare(features)
            mx.eval(self.features.prepared())
        self.dense = DenseTargets.of(targets)

    def _encode(self, ids: np.ndarray) -> TextFeatures:
        return encode_candidates(self.model, ids)

    def _ground(
        self, text: TextFeatures, candidates: list[int], images: list[int]
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        which = mx.array(candidates)
        detection = self.model.detect(
            self.features, TextFeatures(text.memory[which], text.padding[which]), mx.array(images)
        )
        scores = np.array(detection.scores.astype(mx.float32))
        # The segmentation head (about a third of grounding's work) runs only where it counts.
        needed = [k for k, image in enumerate(images) if self.needs_masks(scores[k], image)]
        masks: list[np.ndarray | None] = [None] * len(images)
        if needed:
            logits, _ = self.model.segment(self.features, detection, mx.array(needed))
            for k, row in zip(needed, np.array(logits.astype(mx.float32))):
                masks[k] = row
        return scores, masks

    def _ground_everywhere(self, text: TextFeatures, images: mx.array | None = None) -> Grounding:
        """One prompt's text features [1, ...] grounded on every image (or on ``images``, an
        index array), masks included."""
        images = mx.arange(self.images) if images is None else images
        count = images.shape[0]
        return self.model.ground(
            self.features,
            TextFeatures(mx.repeat(text.memory, count, axis=0), mx.repeat(text.padding, count, axis=0)),
            images,
        )

    def surrogate(
        self,
        embeddings: mx.array,
        padding: mx.array,
        config: ObjectiveConfig | None = None,
        images: mx.array | None = None,
    ) -> mx.array:
        """One soft prompt ([1, L, width] input embeddings, [1, L] padding) -> the surrogate
        score over all images (or over ``images``, an index array: a minibatch), differentiable
        with respect to ``embeddings``; under ``config`` (our own by default), whose temperatures
        must be set."""
        grounded = self._ground_everywhere(self.model.encode_text_embeddings(embeddings, padding), images)
        dense = self.dense if images is None else self.dense.subset(images)
        return surrogate(
            grounded.scores.astype(mx.float32),
            grounded.masks.astype(mx.float32),
            dense.masks,
            dense.valid,
            dense.keep,
            dense.crowd,
            config or self.config,
        )

    def calibrated(self, ids: np.ndarray) -> ObjectiveConfig:
        """Our objective with the surrogate temperatures it leaves unset scaled (``calibrate``)
        to the model's outputs for these token rows [C, context] on every image, grounded one
        row at a time (a full-size row's mask logits on 8 images take half a gigabyte)."""
        if self.config.temperature is not None and self.config.mask_temperature is not None:
            return self.config
        text = self._encode(ids)
        scores, medians = [], []
        for row in range(len(ids)):
            grounded = self._ground_everywhere(TextFeatures(text.memory[row : row + 1], text.padding[row : row + 1]))
            scores.append(np.array(grounded.scores.astype(mx.float32)))
            medians.append(float(np.median(np.abs(np.array(grounded.masks.astype(mx.float32))))))
        return calibrate(self.config, np.stack(scores), float(np.median(medians)))
