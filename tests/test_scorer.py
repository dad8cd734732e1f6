"""The scorer: batched exact scores equal one-pair-at-a-time scoring, and the surrogate is
differentiable back to the input embeddings."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.model.text import TextFeatures
from mlx_alias.search.objective import MaskTarget, ObjectiveConfig, aggregate, score_image
from mlx_alias.search.scorer import Scorer
from mlx_alias.tokenizer import load_tokenizer

CFG = ObjectiveConfig(threshold=0.25)  # the tiny random model's scores sit near 0.3


@pytest.fixture(scope="module")
def setup(mlx_model):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (3, 224, 224, 3)).astype(np.float32)
    features = mlx_model.encode_image(mx.array(pixels))
    size = features.levels[0].shape[1]
    box = np.zeros((size, size), bool)
    box[10:40, 20:50] = True
    targets = [MaskTarget(box[None], np.zeros_like(box)), MaskTarget(np.zeros((0, size, size), bool), np.zeros_like(box)),
               MaskTarget(np.stack([box, np.roll(box, 12, axis=0)]), np.roll(box, -8, axis=1))]
    return features, targets


def test_exact_batched_equals_pairwise(mlx_model, setup):
    features, targets = setup
    ids = load_tokenizer()(["a red car", "velvet lantern", "dog"])
    scorer = Scorer(mlx_model, features, targets, CFG, pairs_per_batch=4)
    batched = scorer.exact(ids)
    assert scorer.evaluations == 9
    for c in range(3):
        results = []
        for i in range(3):
            text = mlx_model.encode_text(mx.array(ids[c:c + 1]))
            g = mlx_model.ground(features, text, mx.array([i]))
            results.append(score_image(np.array(g.scores[0]), np.array(g.masks[0]), targets[i], CFG))
        assert aggregate(results, CFG).score == pytest.approx(batched[c].score, abs=1e-6)
    assert len({round(s.score, 6) for s in batched}) > 1  # prompts are told apart


def test_surrogate_is_differentiable(mlx_model, setup):
    features, targets = setup
    scorer = Scorer(mlx_model, features, targets, CFG)
    ids = mx.array(load_tokenizer()(["a red car"]))
    embeds = mlx_model.token_embeddings(ids)
    value, grad = mx.value_and_grad(lambda e: scorer.surrogate(e, ids == 0))(embeds)
    assert np.isfinite(float(value)) and grad.shape == embeds.shape
    assert float(mx.abs(grad[0, 1:4]).sum()) > 0  # the prompt's tokens get a gradient
    assert float(mx.abs(grad[0, 5:]).sum()) == 0  # padding after the end token does not
    assert TextFeatures  # the scorer builds text features the model's way
