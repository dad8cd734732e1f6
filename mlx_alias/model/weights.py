"""How the MLX model is stored and loaded: a folder with ``model.safetensors`` (transformers
names, MLX layouts) and ``config.json`` (every size), which ``mlx-alias convert`` writes. Loading
is strict: every missing, unexpected or mis-shaped tensor is named before anything runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_alias.config import ModelConfig

from .sam3 import Sam3

WEIGHTS = "model.safetensors"
CONFIG = "config.json"

# MLX's CPU allocator keeps at most 32 MB of freed buffers for reuse (its default cache limit):
# every larger activation (one full-size vision MLP's is 98 MB) is then mapped afresh,
# page-faulted in and zeroed by the kernel, and unmapped when freed. Caching an eighth of
# physical memory removes about 40% of those page faults (docs/performance.md); the peak stays
# the same, the resident set grows by what the cache holds.
CPU_CACHE_FRACTION = 1 / 8


def use_cpu_buffer_cache() -> None:
    """On the CPU device, let MLX cache ``CPU_CACHE_FRACTION`` of physical memory in freed
    buffers (never less than the limit already set). Called by ``load_model``."""
    if mx.default_device().type != mx.cpu:
        return
    target = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * CPU_CACHE_FRACTION)
    previous = mx.set_cache_limit(target)
    if previous > target:
        mx.set_cache_limit(previous)


class WeightsError(ValueError):
    """Weights that do not fit the model; the message is one sentence."""


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_weights(model: nn.Module, weights: dict[str, mx.array]) -> None:
    """Raise a WeightsError naming every missing, unexpected and mis-shaped tensor."""
    expected = {key: value.shape for key, value in tree_flatten(model.parameters())}
    given = weights
    problems = []
    if missing := sorted(set(expected) - set(given)):
        problems.append(f"{len(missing)} missing ({_listing(missing)})")
    if unexpected := sorted(set(given) - set(expected)):
        problems.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
    misshaped = [
        f"{key} {tuple(given[key].shape)} != {tuple(shape)}"
        for key, shape in sorted(expected.items())
        if key in given and tuple(given[key].shape) != tuple(shape)
    ]
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped ({_listing(misshaped)})")
    if problems:
        raise WeightsError("the weights do not fit the model in config.json: " + "; ".join(problems))


def load_part(module: nn.Module, weights: dict[str, mx.array], prefix: str) -> nn.Module:
    """Load the tensors under ``prefix`` (e.g. "detr_decoder.") into one part, strictly."""
    part = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
    check_weights(module, part)
    module.load_weights(list(part.items()))
    return module.eval()


def load_model(weights_dir: Path) -> Sam3:
    """The MLX model of a ``mlx-alias convert`` output folder, in the weights' dtype."""
    weights_dir = Path(weights_dir)
    config_path, weights_path = weights_dir / CONFIG, weights_dir / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise WeightsError(f"{weights_dir} is not an mlx-alias weights folder: {path.name} is missing")
    try:
        cfg = ModelConfig.load(config_path)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise WeightsError(f"cannot read {config_path}: {exc}") from exc
    try:
        weights = mx.load(str(weights_path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise WeightsError(f"cannot read {weights_path}: the file is truncated or not safetensors ({exc})") from exc
    use_cpu_buffer_cache()
    model = Sam3(cfg)
    check_weights(model, weights)
    model.load_weights(list(weights.items()))
    model.eval()
    return model
