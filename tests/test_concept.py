"""The visual-concept phase: the concept centre from masked image features, and a soft prompt
that climbs the alignment with it, projected and scored exactly."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.search.concept import ConceptPhase, concept_centre
from mlx_alias.search.objective import MaskTarget
from mlx_alias.search.phase import SearchContext
from mlx_alias.search.scorer import DenseTargets
from mlx_alias.search.soft import SoftConfig
from mlx_alias.search.vocab import allowed_tokens
from mlx_alias.tokenizer import load_tokenizer


def dense(masks: list[np.ndarray], size: int) -> DenseTargets:
    none = np.zeros((size, size), bool)
    return DenseTargets.of([MaskTarget(m, none) for m in masks])


def test_centre_is_the_masked_regions_contrast_at_feature_resolution():
    # features at 4x4 for masks at 8x8: the masked quarter (top-left 2x2 cells) holds one
    # direction, everything else another, so the contrast is their difference
    inside, outside = np.eye(3)[0], np.eye(3)[1]
    level = np.tile(outside, (2, 4, 4, 1)).astype(np.float32)
    level[:, :2, :2] = inside
    mask = np.zeros((1, 8, 8), bool)
    mask[0, :4, :4] = True
    targets = dense([mask, np.zeros((0, 8, 8), bool)], 8)  # the negative image is left out
    centre = concept_centre(mx.array(level), targets.masks, targets.valid, targets.keep)
    assert np.allclose(np.array(centre), inside - outside, atol=1e-6)


def test_centre_weights_partly_covered_cells_and_needs_an_instance():
    level = np.zeros((1, 2, 2, 1), np.float32)
    level[0, 0, 0] = 1.0
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0] = True  # a quarter of cell (0, 0)
    targets = dense([mask], 4)
    # inside: only cell (0,0), mean 1; outside: (0,0) with weight 3/4 and three cells of 0
    expected = 1.0 - 0.75 / 3.75
    assert float(concept_centre(mx.array(level), targets.masks, targets.valid, targets.keep)[0]) == pytest.approx(
        expected
    )
    empty = dense([np.zeros((0, 4, 4), bool)], 4)
    with pytest.raises(ValueError, match="at least one image with an instance"):
        concept_centre(mx.array(level), empty.masks, empty.valid, empty.keep)


def test_concept_phase_climbs_the_alignment_and_scores_its_projections(mlx_model, scorer):
    before = scorer.evaluations
    tokenizer = load_tokenizer()
    ctx = SearchContext(mlx_model, scorer, tokenizer, allowed_tokens(tokenizer), 3, np.random.default_rng(0))
    phase = ConceptPhase(ctx, SoftConfig(init="random", steps=20, evaluate_every=10, patience=100))
    values, found = [], []
    while not phase.done:
        found += phase.step()
        values.append(phase.value)
    # the value is minus the loss: the cosine between the pooled prompt and the centre
    assert -1.0 <= min(values) and max(values) <= 1.0 and values[-1] > values[0] + 0.1
    assert 1 <= len(found) <= 2 and all(ctx.allowed[list(c.tokens)].all() for c in found)
    assert scorer.evaluations - before == len(ctx.seen) * scorer.images
    assert phase.best.score == max(c.score for c in found)
    with pytest.raises(ValueError, match="no minibatch"):
        ConceptPhase(ctx, SoftConfig(init="random", images=1))
