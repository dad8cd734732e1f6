"""The search's surrogate objective in torch, for the throughput benchmark: the reference has no
soft phase of its own, so this gives it the same work to differentiate."""

from __future__ import annotations

import torch

from mlx_alias.search.objective import CROWD_SHARE, ObjectiveConfig


def torch_greedy_matching(credit: torch.Tensor) -> torch.Tensor:
    """``mlx_alias.search.objective.greedy_matching`` in torch."""
    batch, queries, instances = credit.shape
    free = credit.reshape(batch, -1).clone()
    matched = torch.zeros_like(free)
    flat = torch.arange(queries * instances, device=credit.device)
    for _ in range(instances):
        pick = free.argmax(-1, keepdim=True)
        worth = free.gather(-1, pick) > 0
        taken = (flat // instances == pick // instances) | (flat % instances == pick % instances)
        matched = torch.where((flat == pick) & worth, 1.0, matched)
        free = torch.where(taken, -1.0, free)
    return matched.reshape(credit.shape).to(credit.dtype)


def torch_surrogate(
    scores: torch.Tensor,
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    instance_valid: torch.Tensor,
    keep: torch.Tensor,
    crowd: torch.Tensor,
    config: ObjectiveConfig,
) -> torch.Tensor:
    """``mlx_alias.search.objective.surrogate``, line for line in torch (the search has no torch
    soft phase; this gives the reference the same work to differentiate)."""
    weight = torch.sigmoid((scores - config.threshold) / config.temperature)
    masks = torch.sigmoid(mask_logits / config.mask_temperature).flatten(2)
    probs = masks * keep.flatten(1)[:, None]
    truth = targets.flatten(2)
    inter = probs @ truth.transpose(1, 2)
    union = probs.sum(-1)[..., None] + truth.sum(-1)[:, None] - inter
    soft_iou = inter / union.clamp_min(1e-6)
    valid = instance_valid.to(scores.dtype)
    credit = weight[..., None] * soft_iou * valid[:, None]
    matching = torch_greedy_matching(credit.detach())
    found = (credit * matching).sum(1)
    count = valid.sum(-1)
    in_crowd = (masks @ crowd.flatten(1)[..., None])[..., 0] >= CROWD_SHARE * masks.sum(-1)
    dropped = (in_crowd & (matching.sum(-1) == 0)).detach()
    quality = 2 * found.sum(-1) / (torch.where(dropped, 0.0, weight).sum(-1) + count).clamp_min(1e-6)
    any_prediction = torch.sigmoid((scores.amax(-1) - config.threshold) / config.temperature)
    positive = (count > 0).to(scores.dtype)
    mean_quality = (quality * positive).sum() / positive.sum().clamp_min(1)
    fp_rate = (any_prediction * (1 - positive)).sum() / (1 - positive).sum().clamp_min(1)
    return mean_quality - config.negative_penalty * fp_rate
