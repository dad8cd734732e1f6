"""Timing and peak memory for the benchmarks: forced runs (MLX's lazy graph, CUDA's queue), their
median, and peaks per stage."""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import mlx_alias  # noqa: F401  (first: it loads MKL for MLX's CPU matmuls before mlx.core; see blas.py)

# isort: split
import mlx.core as mx
import torch
from mlx.utils import tree_flatten

GB = 1e9


def force(out: Any) -> None:
    """Finish the work behind ``out``: MLX's lazy graph and CUDA's queue."""
    tree = vars(out) if hasattr(out, "__dataclass_fields__") else out
    arrays = [leaf for _, leaf in tree_flatten(tree) if isinstance(leaf, mx.array)] if tree is not None else []
    if arrays:
        mx.eval(arrays)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], repeats: int, warm_up: bool = True) -> tuple[float, Any]:
    """The median seconds of ``repeats`` forced runs of ``fn`` (after an untimed one unless
    ``warm_up`` is False), and the last run's result."""
    if warm_up:
        force(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        force(out)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


class Peaks:
    """Peak memory per stage, in GB: MLX's allocator, and torch's CUDA allocator where there is one."""

    def __init__(self) -> None:
        self.mlx: dict[str, float] = {}
        self.torch: dict[str, float] = {}

    @contextlib.contextmanager
    def mlx_stage(self, name: str) -> Iterator[None]:
        mx.reset_peak_memory()
        yield
        self.mlx[name] = mx.get_peak_memory() / GB

    @contextlib.contextmanager
    def torch_stage(self, name: str) -> Iterator[None]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        yield
        if torch.cuda.is_available():
            self.torch[name] = torch.cuda.max_memory_allocated() / GB


def process_peak_rss_gb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / GB if sys.platform == "darwin" else peak * 1024 / GB
