"""Save the reference model in the two real checkpoint layouts, and load either back.

``sam3.pt``: a torch pickle of ``{"detector.<key>": tensor}`` as in facebook/sam3 (the
``freqs_cis`` RoPE buffers included, as the official file has them).
transformers: ``model.safetensors`` with ``detector_model.<key>`` as in the hub repo, plus the
``config.json`` that transformers' ``Sam3Model`` needs. Both go through a temporary name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mlx_alias.config import ModelConfig
from mlx_alias.convert.hf_config import to_hf
from mlx_alias.convert.layouts import hf_to_sam3, sam3_to_hf
from mlx_alias.convert.sources import PREFIXES, SAM3, open_checkpoint
from mlx_alias.files import atomic_write, atomic_write_bytes

from .build import build_model
from .compat import pick_device

FORMATS = ("sam3", "hf")


def save_checkpoint(
    model: torch.nn.Module, cfg: ModelConfig, out_dir: Path, fmt: str = "sam3", dtype: torch.dtype | None = None
) -> Path:
    """Write ``sam3.pt`` or ``model.safetensors`` (+ ``config.json``) into ``out_dir``, its
    floating-point tensors in ``dtype`` when given (e.g. float16 to ship a small file)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "config.json", (json.dumps(to_hf(cfg), indent=2) + "\n").encode())
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    if fmt == "sam3":
        prefix = PREFIXES[SAM3][0]
        state = {prefix + k: v for k, v in weights.items()}
        path = out_dir / "sam3.pt"
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        return path
    if fmt == "hf":
        hf, _ = sam3_to_hf({k: v.numpy() for k, v in weights.items()})
        tensors = {f"detector_model.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in sorted(hf.items())}
        path = out_dir / "model.safetensors"
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        return path
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def load_reference(source: Path, device: str | None = None) -> tuple[torch.nn.Module, ModelConfig]:
    """The reference model with a checkpoint's weights (either layout), strictly loaded.
    Only the RoPE tables (recomputed by the model) and the point-prompt projections (absent
    from the transformers layout, never read by text prompts) may be missing."""
    checkpoint = open_checkpoint(source)
    cfg = checkpoint.config
    arrays = {key: load() for key, load in checkpoint.tensors.items()}
    if checkpoint.layout != SAM3:
        arrays = hf_to_sam3(arrays, cfg)
    model = build_model(cfg, seed=None, device="cpu")
    state = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}
    own = model.state_dict()
    for key in own:  # recomputable buffers and sam3's never-read params absent from transformers
        if key not in state and (key.endswith("freqs_cis") or ".points_" in key):
            state[key] = own[key]
    model.load_state_dict(state, strict=True)
    return model.to(pick_device(device)).eval(), cfg
