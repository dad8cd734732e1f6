"""``gelu`` (mlx_alias/model/common.py) against exact GELU in float64, x * Phi(x) from math.erf,
and against MLX's nn.gelu, on the vectorised CPU path (forced where it is not the default: macOS).

Tolerance for values: 4 * 2**-23 * max(|x|, 1). Float32 GELU cannot do much better: rounding
x * Phi(x) alone costs half an ulp of |x| for large x, and for x < 0 the sum 1 + erf(x / sqrt 2)
cancels, so erf's few-ulp error near -1 becomes an absolute error proportional to |x| (about
1e-6 at x = -5, where GELU is -1.4e-6). Measured: 1.8 units here, 1.4 for nn.gelu (MLX's scalar
erf); a wrong coefficient, clamp or scale shows as 1e-3 or more. The derivative, Phi + x phi, lies
in [-0.17, 1.13] and carries no such factor of |x|: 1e-6 absolute (measured 2.4e-7).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_alias.model import common
from mlx_alias.model.common import Gelu, gelu

ULP1 = 2.0**-23
VALUE_ULPS = 4
SLOPE_ABS = 1e-6


@pytest.fixture(autouse=True)
def vectorised_cpu(monkeypatch):
    """The path that Linux's CPU takes, on every platform."""
    monkeypatch.setattr(common, "_SCALAR_CPU_EXP", True)
    with mx.stream(mx.cpu):
        yield


def points() -> np.ndarray:
    """A dense grid over the curved part, the clamp's edge, and large magnitudes both ways."""
    edge = common._ERF_LIMIT
    large = np.logspace(-30, 30, 241)
    return np.concatenate(
        [
            np.linspace(-12, 12, 240_001),
            edge + np.linspace(-1e-3, 1e-3, 201),
            -edge + np.linspace(-1e-3, 1e-3, 201),
            large,
            -large,
            [0.0],
        ]
    ).astype(np.float32)


def exact(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64).tolist()])


def exact_slope(x: np.ndarray) -> np.ndarray:
    return np.array(
        [
            0.5 * (1 + math.erf(v / math.sqrt(2))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
            for v in x.astype(np.float64).tolist()
        ]
    )


def ulps(error: np.ndarray, x: np.ndarray) -> float:
    """The largest error in units of 2**-23 * max(|x|, 1)."""
    return float(np.max(np.abs(error) / (ULP1 * np.maximum(np.abs(x.astype(np.float64)), 1))))


def test_gelu_matches_float64():
    x = points()
    out = gelu(mx.array(x))
    assert out.dtype == mx.float32
    assert ulps(np.array(out).astype(np.float64) - exact(x), x) <= VALUE_ULPS


def test_gelu_matches_nn_gelu():
    x = points()
    ours, theirs = np.array(gelu(mx.array(x))), np.array(nn.gelu(mx.array(x)))
    assert ulps(ours.astype(np.float64) - theirs, x) <= VALUE_ULPS
    assert np.array_equal(np.array(Gelu()(mx.array(x))), ours)


def test_gelu_gradient_matches_float64():
    """The custom vjp's analytic derivative, uncompiled and inside a compiled step."""
    x = points()
    weights = np.random.default_rng(0).uniform(0.5, 2.0, x.shape).astype(np.float32)

    def loss(v: mx.array) -> mx.array:
        return (gelu(v) * mx.array(weights)).sum()

    expected = exact_slope(x) * weights
    for grad in (mx.grad(loss), mx.compile(mx.grad(loss))):
        out = np.array(grad(mx.array(x))).astype(np.float64)
        assert np.max(np.abs(out - expected) / weights) <= SLOPE_ABS


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_gelu_half_inputs(dtype):
    """Computed in float32, returned in the input's dtype: within that dtype's rounding of nn.gelu."""
    x = mx.array(np.linspace(-8, 8, 4001).astype(np.float32)).astype(dtype)
    out = gelu(x)
    assert out.dtype == dtype
    expected = exact(np.array(x.astype(mx.float32)))
    eps = 2.0**-10 if dtype == mx.float16 else 2.0**-7
    assert np.max(np.abs(np.array(out.astype(mx.float32)) - expected) / np.maximum(np.abs(expected), 1)) <= eps
