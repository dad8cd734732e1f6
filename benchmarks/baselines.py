"""The original experiment's way of searching, kept for the benchmarks to compare against: its
GA (embedding-neighbour mutations only, no gradients, one candidate scored at a time) and its
scorer (every evaluation re-reads and re-encodes its image)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_alias.image import load_image, preprocess
from mlx_alias.model.sam3 import Sam3
from mlx_alias.model.text import TextFeatures
from mlx_alias.search.discrete import EvolutionConfig
from mlx_alias.search.objective import MaskTarget, ObjectiveConfig
from mlx_alias.search.scorer import ExactScorer, Scorer, encode_candidates

# The seed-style GA: a population of 20, every mutation an embedding-neighbour swap, no racing.
SEED_STYLE = EvolutionConfig(population=20, neighbour_fraction=1.0, batch_evaluation=False, race=False)


class ReencodingScorer(ExactScorer):
    """The same objective computed as the original experiment computed it, for the benchmarks'
    seed-style baseline: every (candidate, image) pair reads, preprocesses and encodes its image
    again and is grounded alone, with no cached image features and no batching."""

    def __init__(
        self, model: Sam3, paths: list[Path], targets: list[MaskTarget], config: ObjectiveConfig = ObjectiveConfig()
    ):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} images but {len(targets)} targets")
        super().__init__(targets, config, pairs_per_batch=1)
        self.model, self.paths = model, paths

    def _encode(self, ids: np.ndarray) -> TextFeatures:
        return encode_candidates(self.model, ids)

    def _ground(
        self, text: TextFeatures, candidates: list[int], images: list[int]
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        (candidate,), (image,) = candidates, images  # one pair per call (pairs_per_batch 1)
        pixels = preprocess(load_image(self.paths[image]), self.model.cfg.vision.image_size)
        fresh = self.model.encode_image(mx.array(pixels[None]))
        # unprepared: a single pair computes only what it reads (no masks, no pixel decoder)
        single = Scorer(self.model, fresh, [self.targets[image]], self.config, 1, prepare=False)
        return single._ground(text, [candidate], [0])
