"""Open a SAM3 checkpoint a user may hold: the official ``sam3.pt``, the transformers
``model.safetensors``, or a folder as downloaded from the facebook/sam3 hub repo.

Tensors are read lazily, one at a time, so that multi-GB checkpoints show progress and never
sit in memory twice. The safetensors path needs no torch; the ``.pt`` path does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlx_alias.config import ModelConfig

from .hf_config import ConfigError, from_hf

SAM3 = "sam3"
TRANSFORMERS = "transformers"
# Prefixes of the official checkpoint and of the transformers video model; what follows
# them is the image model. The trackers are separate models that the image path never uses.
PREFIXES = {SAM3: ("detector.", "tracker."), TRANSFORMERS: ("detector_model.", "tracker_model.")}
WEIGHT_FILES = ("model.safetensors", "sam3.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as SAM3 weights; the message is one sentence."""


@dataclass
class Checkpoint:
    path: Path
    layout: str  # SAM3 or TRANSFORMERS
    tensors: dict[str, Callable[[], np.ndarray]]  # image-model key -> loader
    config: ModelConfig
    config_source: str
    ignored: dict[str, int] = field(default_factory=dict)  # prefix -> how many keys skipped


def weights_file(source: Path) -> Path:
    """The weights file of a checkpoint: ``source`` itself, or the one a folder holds."""
    if not source.exists():
        raise CheckpointError(f"{source} does not exist")
    if source.is_dir():
        for name in WEIGHT_FILES:
            if (source / name).is_file():
                return source / name
        raise CheckpointError(f"{source} holds neither model.safetensors nor sam3.pt")
    return source


def _safetensors_loaders(path: Path) -> dict[str, Callable[[], np.ndarray]]:
    import mlx.core as mx  # reads bfloat16 too, without torch

    try:
        arrays = mx.load(str(path), format="safetensors")
    except Exception as exc:  # mlx raises RuntimeError/ValueError with a C++ message
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from exc

    def loader(array: mx.array) -> Callable[[], np.ndarray]:
        return lambda: np.array(array.astype(mx.float32) if array.dtype == mx.bfloat16 else array)

    return {key: loader(value) for key, value in arrays.items()}


def _torch_loaders(path: Path) -> dict[str, Callable[[], np.ndarray]]:
    try:
        import torch
    except ImportError as exc:
        raise CheckpointError(
            f"reading {path.name} needs PyTorch: install mlx-alias[reference], or convert model.safetensors"
        ) from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle, zip and storage errors all mean the same to a user
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)})") from exc
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")

    def loader(tensor: torch.Tensor) -> Callable[[], np.ndarray]:
        # copy: the file is memory-mapped, and reading it here is what the progress line shows
        return lambda: (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy().copy()

    return {key: loader(value) for key, value in data.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _config_beside(path: Path) -> tuple[ModelConfig, str]:
    candidate = path.parent / "config.json"
    if not candidate.is_file():
        return ModelConfig(), "SAM3's released sizes (no config.json beside the weights)"
    try:
        data = json.loads(candidate.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{candidate} is not valid JSON ({_first_line(exc)})") from exc
    try:
        return from_hf(data), str(candidate)
    except ConfigError as exc:
        raise CheckpointError(f"{candidate}: {exc}") from exc


def open_checkpoint(source: Path) -> Checkpoint:
    path = weights_file(Path(source))
    if path.suffix == ".safetensors":
        layout, raw = TRANSFORMERS, _safetensors_loaders(path)
    elif path.suffix in (".pt", ".pth", ".bin"):
        layout, raw = SAM3, _torch_loaders(path)
    else:
        raise CheckpointError(f"{path.name} is neither a .pt nor a .safetensors checkpoint")
    keep, skip = PREFIXES[layout]
    tensors: dict[str, Callable[[], np.ndarray]] = {}
    ignored: dict[str, int] = {}
    prefixed = any(key.startswith(keep) for key in raw)
    for key, loader in raw.items():
        if key.startswith(skip):
            ignored[skip] = ignored.get(skip, 0) + 1
        elif prefixed and not key.startswith(keep):
            raise CheckpointError(f"{path.name} mixes '{keep}' keys with others such as '{key}'")
        else:
            tensors[key[len(keep) :] if prefixed else key] = loader
    if not tensors:
        raise CheckpointError(f"{path} holds no SAM3 image-model weights")
    config, config_source = _config_beside(path)
    return Checkpoint(path, layout, tensors, config, config_source, ignored)
