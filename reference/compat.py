"""Make the official ``sam3`` package importable and runnable where it is not by itself.

Each work-around is named and says which sam3 trap it answers. None changes a number that the
image model computes: they only remove CUDA-only or tracker-only requirements.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Iterator

import torch


def _stub_triton_edt() -> None:
    """``sam3/__init__`` imports the video tracker, whose ``sam3/model/edt.py`` imports triton
    at module level. Triton is absent on macOS and CPU-only machines, and the image model never
    calls that distance transform. Where triton is missing, that one module is replaced by a
    stub whose function refuses to run. (A fake ``triton`` package would mislead torch, which
    probes for triton itself.)"""
    if importlib.util.find_spec("triton") is not None:
        return

    def edt_triton(*_args, **_kwargs):
        raise RuntimeError("sam3's video tracker needs triton, which is not installed here")

    edt = types.ModuleType("sam3.model.edt")
    edt.edt_triton = edt_triton
    edt.__mlx_alias_stub__ = True
    sys.modules["sam3.model.edt"] = edt


_stub_triton_edt()

with warnings.catch_warnings():  # the video modules warn about CUDA autocast at import
    warnings.simplefilter("ignore")
    import sam3  # noqa: E402  (must follow the stub)

SAM3_VERSION: str = getattr(sam3, "__version__", "0.1.4")


def exact_fp32() -> None:
    """``sam3.model_builder`` turns TF32 on for Ampere+ GPUs at import (10-bit mantissas in
    matmuls and convolutions), and MLX's CUDA backend uses TF32 for fp32 matmuls unless
    ``MLX_ENABLE_TF32=0`` (measured on an H100: 3e-4 relative error per matmul, 9e-4 on the
    image features). Parity compares true fp32 on both sides, so both are turned off."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.environ["MLX_ENABLE_TF32"] = "0"


exact_fp32()


@contextlib.contextmanager
def pinned_memory_optional() -> Iterator[None]:
    """``SequenceGeometryEncoder._encode_boxes`` calls ``pin_memory()`` on a 4-element scale
    tensor even when there are zero boxes, which raises without CUDA. Pinning only speeds up a
    host-to-device copy, so where CUDA is absent it is made a no-op for the duration."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.pin_memory
    torch.Tensor.pin_memory = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.pin_memory = original  # type: ignore[method-assign]


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU, unless ``requested`` names one."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def focal_loss_without_triton() -> None:
    """``sam3.train.loss.loss_fns.sigmoid_focal_loss`` runs a triton kernel unless told
    ``triton=False``, and its loss classes never tell it: without a GPU (CPU training here,
    or macOS) the kernel cannot start. Where CUDA is absent the module's function is replaced
    by the same function with ``triton=False``, its plain-torch branch of the same formula."""
    if torch.cuda.is_available():
        return
    from sam3.train.loss import loss_fns

    original = loss_fns.sigmoid_focal_loss
    if getattr(original, "__mlx_alias_cpu__", False):
        return

    def sigmoid_focal_loss(*args, **kwargs):
        return original(*args, **{**kwargs, "triton": False})

    sigmoid_focal_loss.__mlx_alias_cpu__ = True
    loss_fns.sigmoid_focal_loss = sigmoid_focal_loss
