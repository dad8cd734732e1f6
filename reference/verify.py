"""``mlx-alias verify``: run the reference and the MLX model on the same image and prompt and
report how far apart they are, so that a user can trust their own conversion.

Tolerances are per dtype of the MLX weights; the reference always computes in true fp32.
fp32 bounds: features and mask logits <= 1e-4 relative L2, official scores and boxes within
1e-3 and 1e-4, presence logit within 1e-3, query masks (binarised at logit 0) with mean IoU >=
0.999 and min >= 0.98, and the mask-loss gradient with cosine >= 0.999. Reduced-precision
bounds follow from what bf16 (8-bit mantissa) and fp16 (11-bit) weights were measured to hold;
see the README.
"""

from __future__ import annotations

from pathlib import Path

from mlx_alias.image import load_image, preprocess
from mlx_alias.model.weights import load_model as load_mlx
from mlx_alias.tokenizer import load_tokenizer

from . import parity
from .checkpoint import load_reference

# name: (bound, "max" if the figure must stay below it, "min" if above)
TOLERANCES: dict[str, dict[str, tuple[float, str]]] = {
    "float32": {
        "image_features_rel_err": (1e-4, "max"),
        "text_features_rel_err": (1e-4, "max"),
        "score_max_abs_err": (1e-3, "max"),
        "presence_abs_err": (1e-3, "max"),
        "box_max_abs_err": (1e-4, "max"),
        "mask_logits_rel_err": (1e-4, "max"),
        "mask_iou_mean": (0.999, "min"),
        "mask_iou_min": (0.98, "min"),
        "grad_cosine": (0.999, "min"),
    },
    "float16": {
        "image_features_rel_err": (1e-2, "max"),
        "text_features_rel_err": (1e-2, "max"),
        "score_max_abs_err": (2e-2, "max"),
        "presence_abs_err": (5e-2, "max"),
        "box_max_abs_err": (5e-3, "max"),
        "mask_logits_rel_err": (1e-2, "max"),
        "mask_iou_mean": (0.98, "min"),
        "mask_iou_min": (0.5, "min"),
        "grad_cosine": (0.98, "min"),
    },
    "bfloat16": {
        "image_features_rel_err": (5e-2, "max"),
        "text_features_rel_err": (5e-2, "max"),
        "score_max_abs_err": (1e-1, "max"),
        "presence_abs_err": (2e-1, "max"),
        "box_max_abs_err": (3e-2, "max"),
        "mask_logits_rel_err": (5e-2, "max"),
        "mask_iou_mean": (0.9, "min"),
        "mask_iou_min": (0.2, "min"),
        "grad_cosine": (0.95, "min"),
    },
}
KEYS = list(TOLERANCES["float32"])


def failures(figures: dict[str, float], dtype: str) -> list[str]:
    out = []
    for key, (bound, kind) in TOLERANCES[dtype].items():
        value = figures[key]
        if (kind == "max" and not value <= bound) or (kind == "min" and not value >= bound):
            out.append(f"{key} = {value:.6g} ({'above' if kind == 'max' else 'below'} {bound:g})")
    return out


def verify(checkpoint: Path, weights: Path, image: Path, prompt: str, device: str | None = None) -> tuple[dict, dict]:
    """(report, details): the report has exactly the figures in ``KEYS`` plus ``passed``; the
    details hold the dtype, the failed bounds and each side's seconds."""
    model = load_mlx(weights)
    reference, cfg = load_reference(checkpoint, device=device)
    if cfg != model.cfg:
        raise ValueError(f"the weights in {weights} do not match {checkpoint}: their config.json sizes differ")
    dtype = str(model.dtype).split(".")[-1]
    pixels = preprocess(load_image(image), cfg.vision.image_size)[None]
    ids = load_tokenizer()(prompt)
    image_part = parity.compare_image_features(reference, model, pixels)
    text_part = parity.compare_text_features(reference, model, ids)
    grounding = parity.compare_grounding(reference, model, pixels, ids)
    gradient = parity.compare_mask_gradients(reference, model, pixels, ids)
    figures = {
        "image_features_rel_err": image_part["image_features_rel_err"],
        "text_features_rel_err": text_part["text_features_rel_err"],
        **{k: grounding[k] for k in ("score_max_abs_err", "presence_abs_err", "box_max_abs_err")},
        # the logits themselves, not only their cut at 0: where every logit has one sign (as on
        # random full-size weights), every mask covers the whole image and the IoU proves little
        "mask_logits_rel_err": grounding["masks_rel_err"],
        **{k: grounding[k] for k in ("mask_iou_mean", "mask_iou_min")},
        "grad_cosine": gradient["grad_cosine"],
    }
    failed = failures(figures, dtype)
    seconds = {
        f"{part}_{side}_s": result[f"{side}_s"]
        for part, result in (("image", image_part), ("text", text_part), ("ground", grounding), ("gradient", gradient))
        for side in ("torch", "mlx")
    }
    return {**figures, "passed": not failed}, {"dtype": dtype, "failures": failed, "seconds": seconds}
