"""Side-by-side comparisons of the MLX model with the reference on the same weights and inputs.

Used by the parity tests (tiny), the full-size parity command (``benchmarks/parity.py``) and
``mlx-alias verify``. Each comparison returns plain floats: relative L2 errors
``||mlx - ref|| / ||ref||`` (accumulated in float64), cosines, and seconds per side.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import torch
from mlx.utils import tree_flatten

from mlx_alias.config import ModelConfig
from mlx_alias.convert.convert import convert
from mlx_alias.model.sam3 import Sam3
from mlx_alias.model.weights import load_model

from . import runners
from .build import build_model
from .checkpoint import save_checkpoint


def as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.array(x.astype(mx.float32)).astype(np.float64)


def rel_err(mine: Any, ref: Any) -> float:
    a, b = as_numpy(mine), as_numpy(ref)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def cosine(mine: Any, ref: Any) -> float:
    a, b = as_numpy(mine).ravel(), as_numpy(ref).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` once and return (result, seconds), MLX's lazy work included."""
    start = time.perf_counter()
    out = fn()
    tree = vars(out) if dataclasses.is_dataclass(out) else out
    mx.eval([leaf for _, leaf in tree_flatten(tree) if isinstance(leaf, mx.array)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def compare_image_features(reference: torch.nn.Module, model: Sam3, pixels: np.ndarray) -> dict[str, float]:
    """Preprocessed images [B, S, S, 3] through both image encoders: the errors of every kept
    neck level and position encoding, and each side's seconds (trunk and neck together)."""
    with torch.no_grad():
        ref, ref_s = timed(lambda: runners.image_features(reference, nchw(pixels).to(device_of(reference))))
    mine, mlx_s = timed(lambda: model.encode_image(mx.array(pixels)))
    out = {"torch_s": ref_s, "mlx_s": mlx_s}
    for i, (level, pos) in enumerate(zip(mine.levels, mine.positions)):
        out[f"level{i}_rel_err"] = rel_err(level, ref["backbone_fpn"][i].permute(0, 2, 3, 1))
        out[f"position{i}_rel_err"] = rel_err(pos, ref["vision_pos_enc"][i][0].permute(1, 2, 0))
    out["image_features_rel_err"] = max(v for k, v in out.items() if k.startswith("level"))
    return out


def compare_text_features(reference: torch.nn.Module, model: Sam3, ids: np.ndarray) -> dict[str, float]:
    """Token ids [B, L] through both text encoders (ids path and embeddings path)."""
    with torch.no_grad():
        ref, ref_s = timed(lambda: runners.text_features_from_ids(reference, torch.from_numpy(ids)))
    mine, mlx_s = timed(lambda: model.encode_text(mx.array(ids)))
    embeds = model.token_embeddings(mx.array(ids))
    from_embeddings = model.encode_text_embeddings(embeds, mine.padding)
    return {
        "torch_s": ref_s,
        "mlx_s": mlx_s,
        "text_features_rel_err": rel_err(mine.memory, ref.memory),
        "embedding_path_rel_err": rel_err(from_embeddings.memory, ref.memory),
        "padding_mismatches": int((as_numpy(mine.padding) != as_numpy(ref.padding)).sum()),
    }


def loss_weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The fixed random weighting that turns outputs into a scalar loss."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def compare_gradients(
    mlx_objective: Callable[[mx.array], mx.array],
    torch_objective: Callable[[torch.Tensor], torch.Tensor],
    embeds: mx.array,
    device: torch.device,
) -> dict[str, float]:
    """Gradients of the same scalar objective with respect to the same input embeddings, by
    ``mx.value_and_grad`` and by torch autograd."""
    (mlx_value, mlx_grad), mlx_s = timed(lambda: mx.value_and_grad(mlx_objective)(embeds))

    def torch_step() -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.from_numpy(as_numpy(embeds).astype(np.float32)).to(device).requires_grad_(True)
        loss = torch_objective(e)
        loss.backward()
        return loss.detach(), e.grad

    (ref_value, ref_grad), ref_s = timed(torch_step)
    return {
        "torch_s": ref_s,
        "mlx_s": mlx_s,
        "grad_cosine": cosine(mlx_grad, ref_grad),
        "grad_rel_err": rel_err(mlx_grad, ref_grad),
        "loss_rel_err": abs(float(mlx_value) - float(ref_value)) / max(abs(float(ref_value)), 1e-30),
    }


def compare_text_gradients(reference: torch.nn.Module, model: Sam3, ids: np.ndarray, seed: int = 0) -> dict[str, float]:
    """loss = sum(text features * R * not-padding), R fixed and random."""
    embeds = model.token_embeddings(mx.array(ids))  # the model's dtype, as a search would use
    padding = mx.array(ids) == 0
    weights = loss_weights((*ids.shape, model.cfg.detector.d_model), seed)
    device = device_of(reference)

    def mlx_loss(e: mx.array) -> mx.array:
        memory = model.encode_text_embeddings(e, padding).memory.astype(mx.float32)
        return (memory * mx.array(weights) * (~padding)[..., None]).sum()

    def torch_loss(e: torch.Tensor) -> torch.Tensor:
        feats = runners.text_features_from_embeddings(reference, e, torch.from_numpy(ids == 0))
        return (feats.memory * torch.from_numpy(weights).to(device) * (~feats.padding)[..., None]).sum()

    return compare_gradients(mlx_loss, torch_loss, embeds, device)


def compare_mask_gradients(
    reference: torch.nn.Module, model: Sam3, pixels: np.ndarray, ids: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """loss = sum(sigmoid(mask logits) * R) / sqrt(count) over every query and pixel, R fixed
    and random, through grounding against the (cached, constant) features of image 0. The
    1/sqrt(count) scale keeps per-pixel gradients inside fp16's normal range: with a mean they
    underflowed (fp16 gradient cosine 0.972 -> 0.999 at tiny size with this scale)."""
    image = model.encode_image(mx.array(pixels[:1]))
    with torch.no_grad():
        ref_image = runners.image_features(reference, nchw(pixels[:1]).to(device_of(reference)))
    embeds = model.token_embeddings(mx.array(ids))
    padding = mx.array(ids) == 0
    queries, size = model.cfg.detector.num_queries, image.levels[0].shape[1]
    weights = loss_weights((ids.shape[0], queries, size, size), seed)
    weights /= np.float32(np.sqrt(weights.size))
    device = device_of(reference)

    def mlx_loss(e: mx.array) -> mx.array:
        masks = model.ground(image, model.encode_text_embeddings(e, padding)).masks.astype(mx.float32)
        return (mx.sigmoid(masks) * mx.array(weights)).sum()

    def torch_loss(e: torch.Tensor) -> torch.Tensor:
        text = runners.text_features_from_embeddings(reference, e, torch.from_numpy(ids == 0))
        masks = runners.ground(reference, ref_image, text)["pred_masks"]
        return (masks.sigmoid() * torch.from_numpy(weights).to(device)).sum()

    return compare_gradients(mlx_loss, torch_loss, embeds, device)


def mask_ious(mine: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """IoU of masks binarised at logit 0, per query [..., H, W]; pairs where both are empty
    are left out."""
    a, b = mine > 0, ref > 0
    inter = (a & b).sum(axis=(-1, -2)).ravel()
    union = (a | b).sum(axis=(-1, -2)).ravel()
    return inter[union > 0] / union[union > 0]


def compare_grounding(
    reference: torch.nn.Module, model: Sam3, pixels: np.ndarray, ids: np.ndarray, image_index: np.ndarray | None = None
) -> dict[str, float]:
    """Grounding of prompts ``ids`` [B, L] against images ``pixels`` [N, S, S, 3] (prompt b on
    image ``image_index[b]``, default 0), from each side's own features."""
    index = np.zeros(len(ids), dtype=np.int64) if image_index is None else np.asarray(image_index)
    device = device_of(reference)
    with torch.no_grad():
        ref_image = runners.image_features(reference, nchw(pixels).to(device))
        ref_text = runners.text_features_from_ids(reference, torch.from_numpy(ids))
        ref, ref_s = timed(lambda: runners.ground(reference, ref_image, ref_text, torch.from_numpy(index)))
    image, text = model.encode_image(mx.array(pixels)), model.encode_text(mx.array(ids))
    mine, mlx_s = timed(lambda: model.ground(image, text, mx.array(index.astype(np.int32))))
    ious = mask_ious(as_numpy(mine.masks), as_numpy(ref["pred_masks"]))
    return {
        "torch_s": ref_s,
        "mlx_s": mlx_s,
        "logits_rel_err": rel_err(mine.logits, ref["pred_logits"][..., 0]),
        "score_max_abs_err": float(np.abs(as_numpy(mine.scores) - as_numpy(ref["scores"])).max()),
        "presence_abs_err": float(np.abs(as_numpy(mine.presence) - as_numpy(ref["presence_logit_dec"][:, 0])).max()),
        "box_max_abs_err": float(np.abs(as_numpy(mine.boxes) - as_numpy(ref["pred_boxes"])).max()),
        "masks_rel_err": rel_err(mine.masks, ref["pred_masks"]),
        "mask_iou_mean": float(ious.mean()) if ious.size else 1.0,
        "mask_iou_min": float(ious.min()) if ious.size else 1.0,
    }


def backbone_parity(
    reference: torch.nn.Module, model: Sam3, pixels: np.ndarray, ids: np.ndarray
) -> dict[str, dict[str, float]]:
    """Image features, text features and text gradients, compared."""
    return {
        "image": compare_image_features(reference, model, pixels),
        "text": compare_text_features(reference, model, ids),
        "gradient": compare_text_gradients(reference, model, ids),
    }


def random_pair(cfg: ModelConfig, seed: int, workdir: Path, dtype: str = "float32") -> tuple[torch.nn.Module, Sam3]:
    """A seeded random reference model and the MLX model made from it the way a user makes
    one: ``sam3.pt`` written, converted with ``dtype``, loaded strictly."""
    reference = build_model(cfg, seed=seed)
    checkpoint = save_checkpoint(reference, cfg, Path(workdir) / "sam3", "sam3")
    convert(checkpoint, Path(workdir) / f"mlx-{dtype}", dtype)
    return reference, load_model(Path(workdir) / f"mlx-{dtype}")
