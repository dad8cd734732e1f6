"""The scorer: batched exact scores equal one-pair-at-a-time scoring, and the surrogate is
differentiable back to the input embeddings."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.image import load_image, preprocess_batch
from mlx_alias.model.text import TextFeatures
from mlx_alias.plant import synthetic_images
from mlx_alias.search.objective import MaskTarget, ObjectiveConfig, aggregate, calibrate, score_image
from mlx_alias.search.scorer import Pruned, Scorer
from mlx_alias.tokenizer import load_tokenizer

CFG = ObjectiveConfig(temperature=0.05, mask_temperature=1.0)  # the surrogate's, fixed


@pytest.fixture(scope="module")
def setup(search_model):
    """Three images whose targets are what "a red car" predicts on the first and third
    (planted), the second a negative."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (3, 224, 224, 3)).astype(np.float32)
    features = search_model.encode_image(mx.array(pixels))
    text = search_model.encode_text(mx.array(load_tokenizer()(["a red car"] * 3)))
    planted = search_model.ground(features, text, mx.arange(3))
    targets = []
    for i in range(3):
        chosen = np.array(planted.scores[i]) > CFG.threshold
        masks = np.array(planted.masks[i])[chosen] > 0
        empty = np.zeros(masks.shape[1:], bool)
        targets.append(MaskTarget(masks if i != 1 else masks[:0], empty))
    return features, targets


def test_exact_batched_equals_pairwise(search_model, setup):
    features, targets = setup
    ids = load_tokenizer()(["a red car", "velvet lantern", "dog"])
    scorer = Scorer(search_model, features, targets, CFG, pairs_per_batch=4)
    batched = scorer.exact(ids)
    assert scorer.evaluations == 9
    for c in range(3):
        results = []
        for i in range(3):
            text = search_model.encode_text(mx.array(ids[c : c + 1]))
            g = search_model.ground(features, text, mx.array([i]))
            results.append(score_image(np.array(g.scores[0]), np.array(g.masks[0]), targets[i], CFG))
        assert aggregate(results, CFG).score == pytest.approx(batched[c].score, abs=1e-6)
    assert len({round(s.score, 6) for s in batched}) > 1  # prompts are told apart


def test_race_scores_survivors_exactly_and_drops_only_the_hopeless(search_model, setup):
    features, targets = setup
    ids = load_tokenizer()(["a red car", "velvet lantern", "dog", "red", "a car", "lantern"])
    scorer = Scorer(search_model, features, targets, CFG, pairs_per_batch=1)
    exact = scorer.exact(ids)
    bar = float(np.mean(sorted(s.score for s in exact)[-2:]))  # between the best two: a high bar
    before = scorer.evaluations
    raced = scorer.race(ids, bar)
    pruned = [c for c, r in enumerate(raced) if isinstance(r, Pruned)]
    assert pruned and scorer.evaluations - before < len(ids) * len(targets)  # pairs were skipped
    for result, full in zip(raced, exact):
        if isinstance(result, Pruned):
            assert full.score <= result.bound <= bar  # a true bound, and below the bar
        else:
            assert result == full  # scored on every image: the same numbers, to the bit


def test_surrogate_is_differentiable(search_model, setup):
    features, targets = setup
    scorer = Scorer(search_model, features, targets, CFG)
    ids = mx.array(load_tokenizer()(["a red car"]))
    embeds = search_model.token_embeddings(ids)
    value, grad = mx.value_and_grad(lambda e: scorer.surrogate(e, ids == 0))(embeds)
    assert np.isfinite(float(value)) and grad.shape == embeds.shape
    assert float(mx.abs(grad[0, 1:4]).sum()) > 0  # the prompt's tokens get a gradient
    assert float(mx.abs(grad[0, 5:]).sum()) == 0  # padding after the end token does not


def test_reencoding_scorer_scores_as_the_cached_scorer(search_model, tmp_path):
    """The seed-style baseline's scorer (each pair re-reads and re-encodes its image) computes
    the same objective as scoring against features encoded once. Tolerance 1e-5: the trunk runs
    on one image instead of a batch of three, so its matmuls round differently."""
    paths = synthetic_images(tmp_path, 3, seed=1)
    size = search_model.cfg.vision.image_size
    features = search_model.encode_image(mx.array(preprocess_batch([load_image(p) for p in paths], size)))
    text = search_model.encode_text(mx.array(load_tokenizer()(["a red car"] * 3)))
    planted = search_model.ground(features, text, mx.arange(3))
    targets = []
    for i in range(3):
        masks = np.array(planted.masks[i])[np.array(planted.scores[i]) > CFG.threshold] > 0
        targets.append(MaskTarget(masks, np.zeros(masks.shape[1:], bool)))
    assert any(t.masks.shape[0] for t in targets)  # something to match
    ids = load_tokenizer()(["a red car", "velvet lantern"])
    cached = Scorer(search_model, features, targets, CFG).exact(ids)
    from baselines import ReencodingScorer

    reencoding = ReencodingScorer(search_model, paths, targets, CFG)
    fresh = reencoding.exact(ids)
    assert reencoding.evaluations == 6
    np.testing.assert_allclose([s.score for s in fresh], [s.score for s in cached], atol=1e-5)
    assert cached[0].score > cached[1].score  # the planted prompt is told apart


def test_masks_only_where_the_objective_reads_them(search_model, setup):
    features, targets = setup
    ids = load_tokenizer()(["a red car", "dog"])
    scorer = Scorer(search_model, features, targets, CFG)
    text = scorer._encode(ids)
    pairs = [(c, i) for c in range(2) for i in range(3)]
    scores, masks = scorer._ground(text, [c for c, _ in pairs], [i for _, i in pairs])
    full = search_model.ground(
        features,
        TextFeatures(text.memory[mx.array([c for c, _ in pairs])], text.padding[mx.array([c for c, _ in pairs])]),
        mx.array([i for _, i in pairs]),
    )
    np.testing.assert_allclose(scores, np.array(full.scores), atol=1e-6)
    computed = 0
    for k, (_, i) in enumerate(pairs):
        expected = targets[i].masks.shape[0] > 0 and (scores[k] > CFG.threshold).any()
        assert (masks[k] is not None) == expected
        if expected:
            computed += 1
            np.testing.assert_allclose(masks[k], np.array(full.masks[k]), atol=1e-5)
    assert 0 < computed < len(pairs)  # some pairs need masks (the planted prompt) and some do not


def test_calibrated_scales_to_these_prompts_outputs(search_model, setup):
    """The temperatures come from every image's groundings of each prompt: the scores' spread
    over all of them, the median over prompts of each one's median |mask logit|."""
    features, targets = setup
    ids = load_tokenizer()(["a red car", "velvet lantern", "dog"])
    scorer = Scorer(search_model, features, targets, ObjectiveConfig(threshold=CFG.threshold))
    scores, medians = [], []
    for c in range(len(ids)):
        text = search_model.encode_text(mx.array(ids[c : c + 1]))
        g = search_model.ground(
            features, TextFeatures(mx.repeat(text.memory, 3, 0), mx.repeat(text.padding, 3, 0)), mx.arange(3)
        )
        scores.append(np.array(g.scores))
        medians.append(np.median(np.abs(np.array(g.masks))))
    expected = calibrate(scorer.config, np.stack(scores), float(np.median(medians)))
    found = scorer.calibrated(ids)
    assert found.temperature == pytest.approx(expected.temperature, rel=1e-5)
    assert found.mask_temperature == pytest.approx(expected.mask_temperature, rel=1e-5)
    assert found.temperature != pytest.approx(calibrate(scorer.config, np.stack(scores[:1]), medians[0]).temperature)
    assert Scorer(search_model, features, targets, CFG).calibrated(ids) == CFG  # given ones are kept
