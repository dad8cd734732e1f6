"""The search objective: exact per-image quality, split aggregation, and the surrogate."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.search.objective import (
    MaskTarget,
    ObjectiveConfig,
    _greedy_match,
    aggregate,
    area_resize,
    calibrate,
    greedy_matching,
    score_image,
    surrogate,
)

CFG = ObjectiveConfig(temperature=0.05, mask_temperature=1.0)  # the surrogate's, fixed


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def logits_of(*masks: np.ndarray) -> np.ndarray:
    return np.stack([np.where(m, 20.0, -20.0) for m in masks]).astype(np.float32)


def target(*masks: np.ndarray, crowd: np.ndarray | None = None, size: int = 16) -> MaskTarget:
    stack = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    return MaskTarget(stack, np.zeros((size, size), bool) if crowd is None else crowd)


def test_area_resize():
    mask = box(64, 48, 8, 40, 12, 36)
    np.testing.assert_array_equal(area_resize(mask, 16, 12), box(16, 12, 2, 10, 3, 9))
    assert area_resize(np.ones((7, 9), bool), 16, 16).all()
    assert not area_resize(np.zeros((30, 20), bool), 16, 16).any()


def test_exact_quality_cases():
    a, b = box(16, 16, 0, 8, 0, 8), box(16, 16, 8, 16, 8, 16)
    empty = np.zeros((16, 16), bool)
    # perfect: one instance found, nothing else predicted
    assert score_image(np.array([0.9, 0.1]), logits_of(a, b), target(a), CFG).quality == pytest.approx(1.0)
    # an extra prediction costs precision: 2 * 1 / (2 + 1)
    assert score_image(np.array([0.9, 0.9]), logits_of(a, b), target(a), CFG).quality == pytest.approx(2 / 3)
    # both instances found
    r = score_image(np.array([0.9, 0.9]), logits_of(b, a), target(a, b), CFG)
    assert r.quality == pytest.approx(1.0) and r.matched == 2
    # half-overlapping mask: IoU 1/2 -> quality 1/2
    half = box(16, 16, 0, 8, 4, 12)
    assert score_image(
        np.array([0.9]), logits_of(half), target(box(16, 16, 0, 8, 0, 8) | box(16, 16, 0, 8, 0, 12)), CFG
    ).quality == pytest.approx(2 / 3)
    # nothing predicted on a positive image; negatives clean or not
    assert score_image(np.array([0.2]), logits_of(a), target(a), CFG).quality == 0.0
    assert score_image(np.array([0.2]), logits_of(a), target(), CFG).quality == 1.0
    assert score_image(np.array([0.7]), logits_of(empty), target(), CFG).quality == 0.0


def test_crowd_pixels_are_ignored():
    a = box(16, 16, 0, 8, 0, 8)
    bigger = box(16, 16, 0, 8, 0, 16)
    crowd = box(16, 16, 0, 8, 8, 16)
    assert score_image(np.array([0.9]), logits_of(bigger), target(a, crowd=crowd), CFG).quality == pytest.approx(1.0)
    assert score_image(np.array([0.9]), logits_of(bigger), target(a), CFG).quality == pytest.approx(0.5)
    # ...but not where they overlap an instance: a mask that misses half of it still loses half
    over = box(16, 16, 0, 8, 0, 12)
    assert score_image(
        np.array([0.9]), logits_of(box(16, 16, 0, 8, 0, 4)), target(a, crowd=over), CFG
    ).quality == pytest.approx(0.5)


def test_unmatched_predictions_inside_crowd_regions_are_dropped():
    """COCO's rule: a prediction that matches no instance and lies at least half inside crowd
    regions is neither a hit nor a miss; one less than half inside still costs precision."""
    a, crowd = box(16, 16, 0, 8, 0, 8), box(16, 16, 8, 16, 0, 16)
    inside, half, mostly_out = box(16, 16, 8, 12, 0, 8), box(16, 16, 6, 10, 8, 16), box(16, 16, 5, 9, 8, 16)
    r = score_image(np.array([0.9, 0.9]), logits_of(a, inside), target(a, crowd=crowd), CFG)
    assert r.quality == pytest.approx(1.0) and r.predicted == 1
    assert score_image(np.array([0.9, 0.9]), logits_of(a, half), target(a, crowd=crowd), CFG).quality == pytest.approx(
        1.0
    )
    assert score_image(
        np.array([0.9, 0.9]), logits_of(a, mostly_out), target(a, crowd=crowd), CFG
    ).quality == pytest.approx(2 / 3)
    # alone on the image, it leaves nothing predicted: the instance is missed
    assert score_image(np.array([0.1, 0.9]), logits_of(a, inside), target(a, crowd=crowd), CFG).quality == 0.0
    # a prediction matched to an instance counts wherever it lies
    r = score_image(np.array([0.9]), logits_of(a), target(a, crowd=a), CFG)
    assert r.quality == pytest.approx(1.0) and r.predicted == 1


def test_aggregate_penalises_false_positives():
    a = box(16, 16, 0, 8, 0, 8)
    pos = score_image(np.array([0.9]), logits_of(a), target(a), CFG)
    clean = score_image(np.array([0.1]), logits_of(a), target(), CFG)
    dirty = score_image(np.array([0.9]), logits_of(a), target(), CFG)
    split = aggregate([pos, clean, dirty], CFG)
    assert split.quality == 1.0 and split.false_positive_rate == 0.5
    assert split.score == pytest.approx(1.0 - 0.5 * 0.5)
    assert split.recall == 1.0 and split.precision == 1.0 and split.mean_iou == 1.0


def _pairs(rng: np.random.Generator, count: int = 6, queries: int = 5, size: int = 16):
    """Random (scores, mask logits, targets, valid) with saturated scores and masks."""
    scores = np.where(rng.random((count, queries)) < 0.3, 0.99, 0.01).astype(np.float32)
    masks = rng.random((count, queries, size, size)) < 0.3
    targets = np.zeros((count, 2, size, size), bool)
    valid = np.zeros((count, 2), bool)
    for b in range(count):
        n = b % 3  # 0, 1 or 2 instances: negatives included
        for t in range(n):
            targets[b, t] = masks[b, t] if rng.random() < 0.7 else rng.random((size, size)) < 0.3
            valid[b, t] = True
    return scores, np.where(masks, 30.0, -30.0).astype(np.float32), targets, valid


def _exact_and_surrogate(
    scores: np.ndarray, logits: np.ndarray, targets: np.ndarray, valid: np.ndarray, crowd: np.ndarray | None = None
) -> tuple[float, float]:
    crowd = np.zeros((len(scores), *targets.shape[2:]), bool) if crowd is None else crowd
    mask_targets = [MaskTarget(targets[b][valid[b]], crowd[b]) for b in range(len(scores))]
    exact = aggregate([score_image(scores[b], logits[b], mask_targets[b], CFG) for b in range(len(scores))], CFG).score
    keep = mx.array(np.stack([~t.ignored() for t in mask_targets]).astype(np.float32))
    soft = surrogate(
        mx.array(scores),
        mx.array(logits),
        mx.array(targets.astype(np.float32)),
        mx.array(valid),
        keep,
        mx.array(crowd.astype(np.float32)),
        CFG,
    )
    return exact, float(soft)


def test_surrogate_agrees_with_the_exact_score_when_saturated():
    """With scores far from the threshold and masks certain, the surrogate is the exact score:
    what is left of the soft threshold is sigmoid(-0.49 / 0.05) ~ 6e-5 per query."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        exact, soft = _exact_and_surrogate(*_pairs(rng))
        assert soft == pytest.approx(exact, abs=1e-3)


def test_surrogate_drops_predictions_inside_crowd_regions_as_the_exact_score_does():
    """Saturated, with a crowd region on each positive image that some unmatched predictions
    lie mostly inside: the exact score drops them, and the surrogate must drop the same ones."""
    rng = np.random.default_rng(5)
    dropped_somewhere = False
    for _ in range(5):
        scores, logits, targets, valid = _pairs(rng)
        crowd = np.zeros((len(scores), 16, 16), bool)
        for b in range(len(scores)):
            if valid[b].any():  # a negative image has no crowd region
                crowd[b] = (logits[b, 3] > 0) | (rng.random((16, 16)) < 0.2)
        exact, soft = _exact_and_surrogate(scores, logits, targets, valid, crowd)
        assert soft == pytest.approx(exact, abs=1e-3)
        without = _exact_and_surrogate(scores, logits, targets, valid)[0]
        dropped_somewhere |= exact != pytest.approx(without)
    assert dropped_somewhere  # the crowd regions changed some exact score, so the agreement tests the drop


def test_surrogate_matches_one_query_to_one_instance():
    """One predicted mask over three overlapping instances is matched to one of them, as in the
    exact score: quality 2 * IoU / (1 + 3). A max over queries per instance would credit it with
    all three (2 * 3 * IoU / 4, above 1)."""
    wide = box(16, 16, 0, 8, 0, 10)
    instances = np.stack([box(16, 16, 0, 8, 0, 9), box(16, 16, 0, 8, 1, 10), box(16, 16, 0, 8, 0, 10)])
    scores = np.array([[0.99, 0.01]], np.float32)
    logits = logits_of(wide, box(16, 16, 8, 16, 0, 16))[None]
    exact, soft = _exact_and_surrogate(scores, logits, instances[None], np.ones((1, 3), bool))
    assert exact == pytest.approx(2 * 1.0 / 4)
    assert soft == pytest.approx(exact, abs=1e-3)


def test_greedy_matching_is_the_exact_scores():
    rng = np.random.default_rng(3)
    for _ in range(20):
        values = np.where(rng.random((2, 7, 4)) < 0.2, 0.0, rng.random((2, 7, 4))).astype(np.float32)
        matched = np.array(greedy_matching(mx.array(values)))
        for b in range(2):
            expected = np.zeros((7, 4))
            for p, t in _greedy_match(values[b]):
                expected[p, t] = 1
            np.testing.assert_array_equal(matched[b], expected)


def test_surrogate_gradient_points_uphill():
    rng = np.random.default_rng(1)
    scores, logits, targets, valid = _pairs(rng)
    scores = np.full_like(scores, 0.45)  # near the threshold, where the gradient lives
    logits = logits / 10
    args = (
        mx.array(targets.astype(np.float32)),
        mx.array(valid),
        mx.ones((len(scores), 16, 16)),
        mx.zeros((len(scores), 16, 16)),
        CFG,
    )

    def value(s, m):
        return surrogate(s, m, *args)

    s, m = mx.array(scores), mx.array(logits)
    base, (gs, gm) = mx.value_and_grad(value, argnums=(0, 1))(s, m)
    assert np.isfinite(np.array(gs)).all() and np.isfinite(np.array(gm)).all()
    assert float(mx.abs(gm).sum()) > 0 and float(mx.abs(gs).sum()) > 0
    stepped = value(s + 1e-3 * gs / mx.abs(gs).max(), m + 1e-1 * gm / mx.abs(gm).max())
    assert float(stepped) > float(base)


def test_surrogate_false_positive_follows_the_highest_score():
    """On a negative image the exact score asks only whether the highest score passes the
    threshold; many queries just below it must not add up to a near-certain prediction (as a
    noisy-OR over queries would: 200 queries at weight 0.12 give 1 - 0.88^200 ~ 1)."""
    below = np.full((1, 200), CFG.threshold - 0.1, np.float32)
    args = (
        mx.zeros((1, 200, 4, 4)),
        mx.zeros((1, 1, 4, 4)),
        mx.zeros((1, 1), dtype=mx.bool_),
        mx.ones((1, 4, 4)),
        mx.zeros((1, 4, 4)),
        CFG,
    )
    clean = float(surrogate(mx.array(below), *args))
    assert clean == pytest.approx(-CFG.negative_penalty / (1 + np.exp(0.1 / CFG.temperature)), rel=1e-4)
    above = below.copy()
    above[0, 7] = CFG.threshold + 0.1
    assert float(surrogate(mx.array(above), *args)) < clean - 0.3 * CFG.negative_penalty


def test_surrogate_gradient_is_finite_when_a_negative_image_predicts_nothing_at_all():
    """A trained model scores a wrong prompt far below the threshold: every soft weight of a
    negative image underflows to 0, and its (unused) quality must not bring 0/0 into the
    gradient, which would turn a soft prompt into NaN."""
    far_below = mx.array(np.full((2, 8), 0.001, np.float32))
    targets = np.zeros((2, 1, 4, 4), np.float32)
    targets[0, 0, :2, :2] = 1
    args = (
        mx.zeros((2, 8, 4, 4)),
        mx.array(targets),
        mx.array([[True], [False]]),
        mx.ones((2, 4, 4)),
        mx.zeros((2, 4, 4)),
        dataclasses.replace(CFG, temperature=0.001),
    )
    value, grad = mx.value_and_grad(lambda s: surrogate(s, *args))(far_below)
    assert np.isfinite(float(value)) and np.isfinite(np.array(grad)).all()


def test_surrogate_mask_temperature_sharpens_weak_masks():
    """A model whose mask logits are small (a random one: |logit| ~ 0.2) still cuts its masks at
    0 in the exact score; a mask temperature brings the surrogate's soft IoU close to that."""
    a = box(16, 16, 0, 8, 0, 8)
    logits = np.where(a, 0.2, -0.2).astype(np.float32)[None, None]
    args = (
        mx.array(np.array([[0.99]], np.float32)),
        mx.array(logits),
        mx.array(a[None, None].astype(np.float32)),
        mx.array(np.array([[True]])),
        mx.ones((1, 16, 16)),
        mx.zeros((1, 16, 16)),
    )
    plain = float(surrogate(*args, CFG))
    sharp = float(surrogate(*args, dataclasses.replace(CFG, mask_temperature=0.02)))
    assert plain < 0.6 and sharp == pytest.approx(1.0, abs=0.02)


def test_calibrate_scales_unset_temperatures_to_the_outputs():
    scores = np.array([[0.1, 0.3], [0.5, 0.7]])  # standard deviation sqrt(0.05)
    unset = ObjectiveConfig(threshold=0.4)
    scaled = calibrate(unset, scores, 0.2)
    assert scaled.temperature == pytest.approx(np.sqrt(0.05) / 8)
    assert scaled.mask_temperature == pytest.approx(0.2 / 5)
    assert (scaled.threshold, scaled.negative_penalty) == (unset.threshold, unset.negative_penalty)
    assert calibrate(CFG, scores, 0.2) == CFG  # given temperatures are kept
    assert calibrate(dataclasses.replace(CFG, mask_temperature=None), scores, 0.2).temperature == CFG.temperature
    # a trained model's random aliases: all near 0, far below the threshold; the soft threshold
    # must reach them (an eighth of the distance), not only span their tiny spread
    far = calibrate(unset, np.array([[1e-6, 2e-6], [1e-6, 3e-6]]), 0.2)
    assert far.temperature == pytest.approx((0.4 - 1.5e-6) / 8)
    with pytest.raises(ValueError, match="give its temperatures"):
        calibrate(unset, np.full((2, 2), 0.4), 0.2)  # constant scores at the threshold: nothing to scale to


def test_surrogate_refuses_unset_temperatures():
    args = (
        mx.zeros((1, 2)),
        mx.zeros((1, 2, 4, 4)),
        mx.zeros((1, 1, 4, 4)),
        mx.zeros((1, 1), dtype=mx.bool_),
        mx.ones((1, 4, 4)),
        mx.zeros((1, 4, 4)),
    )
    with pytest.raises(ValueError, match="temperatures are not set"):
        surrogate(*args, ObjectiveConfig())
