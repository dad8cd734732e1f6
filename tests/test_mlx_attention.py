"""``attend`` on the CPU (the fused kernel on Linux, see ``mlx_alias/model/common.py``) against a float64
reference and against MLX's ``scaled_dot_product_attention``, with every kind of mask the model
passes: none, a key padding mask, an additive bias with padded keys at -inf.

Tolerance: float32 attention is ~1e-6 relative from float64 (measured here: 2e-7 to 2e-6, as
MLX's sdpa; the float32 rounding of large scores dominates); 1e-5 leaves a fivefold margin
while a wrong scale, a mask read the wrong way or a power of two off by one in the exp shows up
as 1e-2 or more. Half precision: measured 6e-4 to 1e-3, bound 5e-3.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.model import common
from mlx_alias.model.common import attend

FP32 = 1e-5


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray) -> np.ndarray:
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1]) + bias
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True) @ v


def rel(a: mx.array, b: np.ndarray) -> float:
    a = np.array(a.astype(mx.float32)).astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def inputs(kind: str, queries: int = 70, keys: int = 90):
    """q, k, v [2, 3, L, 16], the mask as attend takes it and as an additive float64 bias."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, n, 16)).astype(np.float32) for n in (queries, keys, keys))
    q *= 4  # sharp attention: the largest weights dominate
    padded = np.arange(keys)[None] >= np.array([keys, keys - 20])[:, None]  # batch 1: last 20 keys
    bias = np.where(padded[:, None, None, :], -np.inf, 0.0)
    mask = None
    if kind == "padding":
        mask = mx.array(~padded[:, None, None, :])
    elif kind == "bias":
        extra = rng.standard_normal((2, 3, queries, keys)).astype(np.float32) * 3
        bias = bias + extra
        mask = mx.array(np.where(padded[:, None, None, :], -np.inf, extra).astype(np.float32))
    else:
        bias = np.zeros_like(bias)
    return q, k, v, mask, bias


@pytest.mark.parametrize("kind", ["none", "padding", "bias"])
def test_attend_matches_float64(kind):
    q, k, v, mask, bias = inputs(kind)
    expected = reference(*(x.astype(np.float64) for x in (q, k, v)), bias)
    out = attend(mx.array(q), mx.array(k), mx.array(v), mask)
    assert rel(out, expected) <= FP32
    sdpa = mx.fast.scaled_dot_product_attention(mx.array(q), mx.array(k), mx.array(v), scale=0.25, mask=mask)
    assert rel(out, np.array(sdpa).astype(np.float64)) <= FP32


def test_attend_blocks_and_half_precision():
    """Blocks of query rows (many keys) and of (batch, head) pairs (few keys) give the same
    attention; half inputs come back in their dtype, within half precision."""
    for queries, keys in [(700, 1500), (40, 30)]:
        q, k, v, mask, bias = inputs("bias", queries, keys)
        expected = reference(*(x.astype(np.float64) for x in (q, k, v)), bias)
        assert rel(attend(mx.array(q), mx.array(k), mx.array(v), mask), expected) <= FP32
        half = attend(*(mx.array(x).astype(mx.float16) for x in (q, k, v)), mask.astype(mx.float16))
        assert half.dtype == mx.float16
        assert rel(half, expected) <= 5e-3


@pytest.mark.parametrize("kind", ["padding", "bias"])
@pytest.mark.parametrize("queries, keys", [(70, 90), (400, 1500)])
def test_attend_gradient_and_masked_keys(kind, queries, keys):
    """The gradient (the additive mask's too) matches sdpa's, in one block of query rows and in
    several (1,500 keys: blocks of 174 rows, the last partial), and padded keys get exactly none
    (they get weight 0)."""
    q, k, v, mask, _ = inputs(kind, queries, keys)
    weights = mx.array(np.random.default_rng(1).standard_normal((2, 3, queries, 16)).astype(np.float32))
    differentiable = kind == "bias"

    def loss(fn):
        return lambda q, k, v, m: (fn(q, k, v, m if differentiable else mask) * weights).sum()

    def sdpa(q, k, v, m):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=m)

    args = [mx.array(x) for x in (q, k, v)] + [mask]
    argnums = (0, 1, 2, 3) if differentiable else (0, 1, 2)
    mine = mx.grad(loss(attend), argnums=argnums)(*args)
    theirs = mx.grad(loss(sdpa), argnums=argnums)(*args)
    for a, b in zip(mine, theirs):
        a, b = np.array(a), np.array(b)
        finite = np.isfinite(b)  # sdpa's mask gradient is NaN at -inf entries; ours is 0 there
        assert rel(mx.array(np.where(finite, a, 0)), np.where(finite, b, 0).astype(np.float64)) <= FP32
    assert not np.array(mine[1])[1, :, -20:].any() and not np.array(mine[2])[1, :, -20:].any()


def test_kernel_refuses_another_mlx(monkeypatch):
    """A C++ extension is bound to the MLX it was compiled against: another one is refused in
    one sentence rather than run."""
    if not common._FUSED_CPU_ATTENTION:
        pytest.skip("the fused CPU kernel is built on Linux only")
    from mlx_alias import _cpu_attention

    monkeypatch.setattr(_cpu_attention, "mlx_version", "0.0.1")
    with pytest.raises(ImportError, match="built against MLX 0.0.1 but MLX .* is installed"):
        common._cpu_kernel()


def test_kernel_missing_is_one_sentence(monkeypatch):
    """Installed with MLX_ALIAS_CPU_KERNEL=0, the CPU path says so instead of failing obscurely."""
    import sys

    import mlx_alias

    monkeypatch.delattr(mlx_alias, "_cpu_attention", raising=False)
    monkeypatch.setitem(sys.modules, "mlx_alias._cpu_attention", None)  # import raises ModuleNotFoundError
    with pytest.raises(ImportError, match="CPU attention extension is not built"):
        common._cpu_kernel()


def test_attend_gradient_of_a_plain_sum():
    """A plain sum's cotangent is a broadcast view, not rows in memory: the gradient still
    matches sdpa's."""
    q, k, v, mask, _ = inputs("padding")
    args = [mx.array(x) for x in (q, k, v)]
    mine = mx.grad(lambda q, k, v: attend(q, k, v, mask).sum(), argnums=(0, 1, 2))(*args)
    theirs = mx.grad(
        lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask).sum(), argnums=(0, 1, 2)
    )(*args)
    for a, b in zip(mine, theirs):
        assert rel(a, np.array(b).astype(np.float64)) <= FP32
