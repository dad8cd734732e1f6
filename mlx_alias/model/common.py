"""Small pieces every part uses: head splitting, attention over projected heads, the MLP."""

from __future__ import annotations

import math
import sys

import mlx.core as mx
import mlx.nn as nn


def split_heads(x: mx.array, heads: int) -> mx.array:
    """[B, L, C] -> [B, heads, L, C / heads]."""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """[B, heads, L, D] -> [B, L, heads * D]."""
    batch, heads, length, dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * dim)


def attend(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | str | None = None) -> mx.array:
    """Scaled dot-product attention over [B, heads, L, D] inputs; a boolean ``mask`` is True
    where a query may attend (the opposite of torch's key_padding_mask), an additive one is
    added to the scores."""
    if _FUSED_CPU_ATTENTION and mx.default_device().type == mx.cpu and not isinstance(mask, str):
        return _attend_cpu(q, k, v, mask)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)


# Attention on the CPU. Outside macOS, MLX's CPU exp and reductions are scalar and single-threaded
# (its SIMD layer is one lane wide there): its sdpa spent 4.6 s on one 5,184-token, 8-head
# fusion-encoder layer on a 2-core x86 CPU, 3.7 s of it in exp. On Linux the forward pass is the
# fused, threaded kernel of mlx_alias/cpu_attention (scores, softmax and weighted values per block
# of query rows while it is in cache; 0.46 s for a batch of two, torch 0.50 s), built at install.
# Its backward pass is a second kernel there, flash-attention style: the probabilities recomputed
# from the forward pass's log-sum-exp. Float32 throughout.
_FUSED_CPU_ATTENTION = sys.platform.startswith("linux")


def _cpu_kernel():
    try:
        from mlx_alias import _cpu_attention  # built by setup.py on Linux
    except ModuleNotFoundError:
        raise ImportError(
            "mlx_alias's CPU attention extension is not built (MLX_ALIAS_CPU_KERNEL=0 at install?); "
            "reinstall mlx-alias with pip to run on the CPU"
        ) from None

    if _cpu_attention.mlx_version != mx.__version__:
        raise ImportError(
            f"mlx_alias's CPU attention was built against MLX {_cpu_attention.mlx_version} but "
            f"MLX {mx.__version__} is installed; reinstall mlx-alias"
        )
    return _cpu_attention


@mx.custom_function
def _fused_attention(q: mx.array, k: mx.array, v: mx.array, *mask: mx.array) -> tuple[mx.array, mx.array]:
    """(softmax(q k^T / sqrt D + mask) v, the rows' log-sum-exp) for float32 q [P, L, D],
    k [P, S, D], v [P, S, Dv] and an optional additive mask [P, 1 or L, S]."""
    return tuple(_cpu_kernel().cpu_attention(q, k, v, q.shape[-1] ** -0.5, mask[0] if mask else None))


@_fused_attention.vjp
def _fused_attention_vjp(
    primals: tuple[mx.array, ...], cotangents: tuple[mx.array, mx.array], outputs: tuple[mx.array, mx.array]
) -> tuple[mx.array, ...]:
    # The log-sum-exp output is for the backward kernel only: its cotangent is ignored. The
    # cotangent may be a view (a broadcast, when the loss is a plain sum): the kernel reads rows.
    q, k, v, *mask = primals
    out, log_sum_exp = outputs
    d_out = mx.contiguous(cotangents[0].astype(mx.float32))
    backward = _cpu_kernel().cpu_attention_backward
    return tuple(backward(q, k, v, out, log_sum_exp, d_out, q.shape[-1] ** -0.5, mask[0] if mask else None))


def _attend_cpu(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
    """``attend`` on the CPU through the fused kernel (see above), in float32, returned in q's
    dtype; a boolean mask becomes an additive one (0 or -inf)."""
    batch, heads, length, dim = q.shape
    pairs, keys, dtype = batch * heads, k.shape[2], q.dtype

    def flat(x: mx.array) -> mx.array:
        return mx.contiguous(x.astype(mx.float32).reshape(pairs, x.shape[2], x.shape[3]))

    extra = []
    if mask is not None:
        if mask.dtype == mx.bool_:
            mask = mx.where(mask, mx.array(0.0, mx.float32), mx.array(-mx.inf, mx.float32))
        mask_rows = mask.shape[-2] if mask.ndim > 1 else 1
        extra = [flat(mx.broadcast_to(mask.astype(mx.float32), (batch, heads, mask_rows, keys)))]
    out, _ = _fused_attention(flat(q), flat(k), flat(v), *extra)
    return out.reshape(batch, heads, length, -1).astype(dtype)


# Exact GELU on the CPU. MLX's CPU erf and exp are scalar outside macOS (see above): nn.gelu
# took 1.1 s on one full-size vision MLP's 25M activations (32 of them per image). Here x * Phi(x)
# comes from Eigen's float32 erf (XLA's too: a 9/12-degree rational in x, within 3 ulp on
# |x/sqrt 2| <= 3.8325, beyond which erf rounds to +-1) in one compiled kernel: 0.2 s. GELU keeps
# the erf form (not the tanh approximation) because torch's nn.GELU(), which sam3 uses, does.
_SCALAR_CPU_EXP = sys.platform != "darwin"  # macOS's CPU backend has a vector erf (Accelerate)
_ERF_LIMIT = 3.832506856900711 * math.sqrt(2)  # |x| beyond which erf(x / sqrt 2) is +-1 in float32
# Eigen's coefficients in z = x / sqrt 2 (erf(z) = z P(z^2) / Q(z^2)), rewritten for x^2 so that
# the kernel saves the scaling step: MLX fuses graphs at most 11 operations deep, and this one,
# clamp to output, is 10.
_ERF_P = tuple(
    a / (math.sqrt(2) * 2**i)
    for i, a in enumerate(
        (1.128379143519084, 0.18520832239976145, 0.050955695062380861, 0.0034082910107109506, 0.00022905065861350646)
    )
)
_ERF_Q = tuple(
    b / 2**i
    for i, b in enumerate(
        (
            1.0,
            0.49746925110067538,
            0.11098505178285362,
            0.014070470171167667,
            0.0010179625278914885,
            0.000023547966471313185,
            -1.1791602954361697e-7,
        )
    )
)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu(x: mx.array) -> mx.array:
    """Exact GELU, x * Phi(x) (the erf form); vectorised on the CPU outside macOS (see above)."""
    if _SCALAR_CPU_EXP and mx.default_device().type == mx.cpu:
        return _gelu_float32(x.astype(mx.float32)).astype(x.dtype)
    return nn.gelu(x)


class Gelu(nn.Module):
    """``gelu`` as a layer (for layer lists: nn.GELU's place)."""

    def __call__(self, x: mx.array) -> mx.array:
        return gelu(x)


def _erf_parts(x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """x clamped, and the numerator polynomial P and denominator Q of erf(x / sqrt 2) = x P / Q
    at it, by Estrin's scheme (shallow: see above)."""
    x = mx.minimum(mx.maximum(x, -_ERF_LIMIT), _ERF_LIMIT)
    u = x * x
    u2 = u * u
    p, q = _ERF_P, _ERF_Q
    numerator = ((p[0] + p[1] * u) + u2 * (p[2] + p[3] * u)) + (u2 * u2) * p[4]
    denominator = ((q[0] + q[1] * u) + u2 * (q[2] + q[3] * u)) + (u2 * u2) * ((q[4] + q[5] * u) + u2 * q[6])
    return x, numerator, denominator


@mx.compile
def _gelu_kernel(x: mx.array) -> mx.array:
    # half + half * erf, with erf's factor x (clamped) taken into half first: that keeps the
    # graph within the fusion depth (one kernel, not two).
    clamped, numerator, denominator = _erf_parts(x)
    half = 0.5 * x
    return half + ((half * clamped) * numerator) / denominator


# exp for GELU's derivative, vectorised: 2**n * 2**f with Cephes' polynomial for 2**f (the one
# MLX's exp uses), in compiled kernels the CPU JIT vectorises.
_LOG2E = 1.4426950408889634
_FLOOR = -127.0  # exponents clamped here get the power 2**-127 written as bits 0: weight exactly 0
_ROUND = 12582912.0  # 1.5 * 2**23: (t + _ROUND) - _ROUND is t rounded to an integer
_EXP2 = (
    1.0,
    6.931472028550421e-1,
    2.402264791363012e-1,
    5.550332471162809e-2,
    9.618437357674640e-3,
    1.339887440266574e-3,
    1.535336188319500e-4,
)  # 2**f on |f| <= 1/2


@mx.compile
def _integer_powers(t: mx.array) -> mx.array:
    """2**round(t) as float32 bit patterns (int32): the biased exponent round(t) + 127 in place."""
    return ((((t + _ROUND) - _ROUND) + 127.0) * 8388608.0).astype(mx.int32)


@mx.compile
def _times_fraction_power(t: mx.array, powers: mx.array) -> mx.array:
    """powers * 2**f for f = t - round(t); Estrin's scheme keeps the graph within MLX's fusion
    depth (11), so that this is one kernel."""
    f = t - ((t + _ROUND) - _ROUND)
    f2 = f * f
    c = _EXP2
    low = (c[0] + c[1] * f) + f2 * (c[2] + c[3] * f)
    high = (c[4] + c[5] * f) + f2 * c[6]
    return (low + (f2 * f2) * high) * powers


@mx.compile
def _gelu_slope(x: mx.array) -> mx.array:
    """GELU'(x) = Phi(x) + x phi(x), phi's exp(-x^2 / 2) from the vectorised exp above (the
    exponent clamped at _FLOOR: phi is then 0 in float32 anyway)."""
    t = mx.maximum((-0.5 * _LOG2E) * (x * x), _FLOOR)
    gaussian = _times_fraction_power(t, mx.view(_integer_powers(t), mx.float32))
    clamped, numerator, denominator = _erf_parts(x)
    return (0.5 + (0.5 * clamped) * numerator / denominator) + (_INV_SQRT_2PI * x) * gaussian


@mx.custom_function
def _gelu_float32(x: mx.array) -> mx.array:
    return _gelu_kernel(x)


@_gelu_float32.vjp
def _gelu_float32_vjp(x: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
    # The analytic derivative: the rational's own would add its error's derivative.
    return cotangent * _gelu_slope(x)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2, named as the transformers layout names it."""

    def __init__(self, dims: int, hidden: int, activation=gelu):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden)
        self.fc2 = nn.Linear(hidden, dims)
        self._activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self._activation(self.fc1(x)))


def attend_mask(key_padding: mx.array | None, bias: mx.array | None = None) -> mx.array | None:
    """An sdpa mask from a key padding mask [B, Lk] (True = padding, sam3's convention) and/or
    an additive bias [B, heads, Lq, Lk]: padded keys get -inf added to the bias."""
    if key_padding is None:
        return bias
    keep = ~key_padding[:, None, None, :]
    if bias is None:
        return keep
    return mx.where(keep, bias, mx.array(-mx.inf, dtype=bias.dtype))


class Attention(nn.Module):
    """nn.MultiheadAttention as the detector uses it (q/k/v/o projections with bias), batch
    first: queries [B, Lq, d], keys and values [B, Lk, d]."""

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.o_proj = nn.Linear(dims, dims)

    def project(self, queries: mx.array, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v projected and split into heads [B, heads, L, D]."""
        return (
            split_heads(self.q_proj(queries), self.heads),
            split_heads(self.k_proj(keys), self.heads),
            split_heads(self.v_proj(values), self.heads),
        )

    def __call__(
        self,
        queries: mx.array,
        keys: mx.array,
        values: mx.array,
        key_padding: mx.array | None = None,
        bias: mx.array | None = None,
    ) -> mx.array:
        q, k, v = self.project(queries, keys, values)
        return self.o_proj(merge_heads(attend(q, k, v, attend_mask(key_padding, bias))))
