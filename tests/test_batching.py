"""The batch measured from free memory: it fits the share it was given, and stays in bounds."""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.search.batching import _grounding_peak, first_image, pairs_that_fit


@pytest.fixture(scope="module")
def image(mlx_model, tiny_cfg):
    size = tiny_cfg.vision.image_size
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    return mlx_model.encode_image(mx.array(pixels))


@pytest.fixture(scope="module")
def first(mlx_model, image):
    return first_image(mlx_model, image)


def test_grounding_memory_grows_linearly_with_the_pairs(mlx_model, first):
    _grounding_peak(mlx_model, first, 1)  # the first call allocates what later ones reuse
    two, four, eight = (_grounding_peak(mlx_model, first, n) for n in (2, 4, 8))
    # Peaks vary by about a tenth from run to run in the full suite (36.5 MB against 33.0 MB
    # once); growth quadratic in the pairs would be 2x off, far outside this tolerance.
    assert two > 0 and (eight - four) == pytest.approx(2 * (four - two), rel=0.2)


def test_the_chosen_batch_fits_its_share_of_free_memory(mlx_model, image, first):
    per_pair = (_grounding_peak(mlx_model, first, 4) - _grounding_peak(mlx_model, first, 2)) / 2
    gc.collect()  # as pairs_that_fit does: garbage freed between the two readings would widen its room
    free = mx.get_memory_limit() - mx.get_active_memory()
    share = 10.5 * per_pair / free  # room for about ten pairs
    pairs = pairs_that_fit(mlx_model, image, share)
    assert 5 <= pairs <= 12
    assert _grounding_peak(mlx_model, first, pairs) <= share * free


def test_the_batch_stays_within_one_and_most(mlx_model, image):
    assert pairs_that_fit(mlx_model, image, share=1e-9) == 1
    assert pairs_that_fit(mlx_model, image, share=0.5, most=3) == 3
