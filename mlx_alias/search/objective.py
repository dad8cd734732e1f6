"""The one objective that search and ``evaluate`` share, and its differentiable surrogate.

A prompt's predicted instances on an image are the queries whose official score
``sigmoid(logit) * sigmoid(presence)`` exceeds ``threshold`` (0.5, sam3's own), with their
masks cut at logit 0, all at the model's mask resolution (288x288 at full size; the target
masks are area-resized to it). Crowd regions are handled as COCO's evaluation handles them:
their pixels outside every target instance count in no mask, and a prediction that matches no
instance and lies at least half inside them is dropped, neither a hit nor a miss (without the
drop, a prompt that rightly finds the objects of a crowd region would lose precision for it).

Per image, with P predictions (less those dropped), n target instances and greedy one-to-one
matching by IoU:

    quality = 2 * (sum of matched IoUs) / (P + n)        (1 when P = n = 0)

an IoU-weighted F-score: it rewards recall (every instance found), precision (nothing else
predicted) and mask quality together. On a negative image (n = 0) it is 1 with no
prediction and 0 with any. A split's score is

    score = mean quality over positive images - negative_penalty * false-positive rate

where the false-positive rate is the fraction of negative images with any prediction (so a
prompt that segments "everything salient" loses what it gains). The surrogate replaces the
threshold with a steep sigmoid, masks with probabilities, IoU with soft IoU and, on a negative
image, "any prediction" with the soft threshold of its highest score, so that its gradient points
where the exact score improves. It keeps the exact score's greedy one-to-one matching, made on the
soft credits (soft "is predicted" times soft IoU) and held fixed under the gradient, as DETR holds
its matching: a max over queries per instance instead lets one query take the credit of every
instance it overlaps, and on the planted tiny worlds, whose instances overlap, soft ascents then
climbed to aliases with twice the hidden prompt's surrogate and half its exact score. Like the
exact score it drops the unmatched queries whose (soft) masks lie at least half inside crowd
regions, a choice also held fixed under the gradient.

The surrogate's two temperatures, unless given, are scaled to the model's own outputs on the
task (``calibrate``): a random tiny model's mask logits lie within about 0.2 of 0 and its scores
spread by about 0.1; constants tuned to those would suit trained weights only by chance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np


@dataclass(frozen=True)
class ObjectiveConfig:
    threshold: float = 0.5  # official score above which a query is a predicted instance
    negative_penalty: float = 0.5  # weight of the false-positive rate on negative images
    # Width of the surrogate's soft threshold, in score units; None: ``calibrate``'s.
    temperature: float | None = None
    # The surrogate's mask probabilities are sigmoid(logit / this); None: ``calibrate``'s.
    mask_temperature: float | None = None


# ``calibrate``'s temperatures, as fractions of the model's output spread: the mask temperature
# makes the median pixel's probability sigmoid(5) = 0.993, as decided as the exact mask's cut;
# the score temperature is an eighth of the scores' standard deviation, where the surrogate
# ranks aliases as the exact score does (docs/method.md, "The surrogate"), or of their median's
# distance from the threshold when that is larger: a trained model scores random aliases near 0,
# all alike, and a soft threshold as narrow as their spread would give them no gradient at all.
MASK_LOGITS_PER_TEMPERATURE = 5.0
SCORE_SPREADS_PER_TEMPERATURE = 8.0


def calibrate(config: ObjectiveConfig, scores: np.ndarray, mask_logits_median: float) -> ObjectiveConfig:
    """``config`` with each temperature it leaves unset scaled to the model's outputs: official
    scores of some prompts on the task's images (any shape), and the median |mask logit| of
    their queries."""
    temperature = config.temperature
    if temperature is None:
        spread = max(float(np.std(scores)), abs(config.threshold - float(np.median(scores))))
        temperature = spread / SCORE_SPREADS_PER_TEMPERATURE
    mask_temperature = config.mask_temperature
    if mask_temperature is None:
        mask_temperature = mask_logits_median / MASK_LOGITS_PER_TEMPERATURE
    if not (temperature > 0 and mask_temperature > 0):  # constant outputs: no gradient to scale
        raise ValueError(
            f"cannot scale the surrogate to outputs with score spread {np.std(scores):.3g} (median at the threshold) "
            f"and median |mask logit| {mask_logits_median:.3g}: give its temperatures"
        )
    return replace(config, temperature=temperature, mask_temperature=mask_temperature)


# COCO's: a prediction at least this much inside crowd regions (intersection over its own area)
# matches them, when it matches no instance.
CROWD_SHARE = 0.5


@dataclass
class MaskTarget:
    """One image's targets at the model's mask resolution."""

    masks: np.ndarray  # bool [n, h, w]; n = 0 on a negative image
    crowd: np.ndarray  # bool [h, w]: the union of the crowd regions; none on a negative image

    def ignored(self) -> np.ndarray:
        """bool [h, w]: the pixels that count in no mask, those of crowd regions outside every instance."""
        return self.crowd & ~self.masks.any(0)


def area_resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bool mask [..., H, W] resized by pixel-area coverage and cut at one half."""
    rows = _coverage(mask.shape[-2], height)
    cols = _coverage(mask.shape[-1], width)
    return (rows @ mask.astype(np.float32) @ cols.T) >= 0.5


def _coverage(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in]: the fraction of each output cell that each input pixel covers."""
    edges_out = np.arange(size_out + 1) * (size_in / size_out)
    lo, hi = edges_out[:-1, None], edges_out[1:, None]
    pixel = np.arange(size_in)[None]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0, None)
    return (overlap / (hi - lo)).astype(np.float32)


def prepare_target(masks: np.ndarray, crowd: np.ndarray, size: int) -> MaskTarget:
    """Targets at the original image size -> at the model's square mask resolution (the model
    sees the image stretched to a square, so its masks cover the whole image)."""
    return MaskTarget(area_resize(masks, size, size), area_resize(crowd, size, size))


@dataclass
class ImageResult:
    quality: float
    predicted: int  # less those dropped in crowd regions
    instances: int
    matched: int
    matched_iou: float  # sum over matched pairs


def _greedy_match(iou: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one pairs (prediction, target) by descending IoU, positive IoU only."""
    pairs, used_p, used_t = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        p, t = np.unravel_index(flat, iou.shape)
        if iou[p, t] <= 0:
            break
        if p not in used_p and t not in used_t:
            pairs.append((int(p), int(t)))
            used_p.add(p)
            used_t.add(t)
    return pairs


def score_image(
    scores: np.ndarray, mask_logits: np.ndarray | None, target: MaskTarget, config: ObjectiveConfig
) -> ImageResult:
    """The exact per-image quality of one prompt: ``scores`` [Q], ``mask_logits`` [Q, h, w]
    (read only on a positive image with a prediction, so None is accepted elsewhere)."""
    chosen = np.flatnonzero(scores > config.threshold)
    n = target.masks.shape[0]
    if chosen.size == 0 or n == 0:
        quality = 1.0 if chosen.size == n else 0.0
        return ImageResult(quality, int(chosen.size), n, 0, 0.0)
    masks = mask_logits[chosen].reshape(chosen.size, -1) > 0
    predicted = masks & ~target.ignored().ravel()
    truth = target.masks.reshape(n, -1)
    inter = predicted.astype(np.float32) @ truth.T.astype(np.float32)
    union = predicted.sum(1)[:, None] + truth.sum(1)[None] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    pairs = _greedy_match(iou)
    total = float(sum(iou[p, t] for p, t in pairs))
    area = masks.sum(1)
    in_crowd = (area > 0) & ((masks & target.crowd.ravel()).sum(1) >= CROWD_SHARE * area)
    in_crowd[[p for p, _ in pairs]] = False
    counted = int(chosen.size - in_crowd.sum())
    return ImageResult(2 * total / (counted + n), counted, n, len(pairs), total)


@dataclass
class SplitScore:
    score: float
    quality: float  # mean over positive images
    false_positive_rate: float  # fraction of negative images with any prediction
    recall: float  # matched / target instances
    precision: float  # matched / predictions on positive images
    mean_iou: float  # over matched pairs


def aggregate(results: list[ImageResult], config: ObjectiveConfig) -> SplitScore:
    positives = [r for r in results if r.instances > 0]
    negatives = [r for r in results if r.instances == 0]
    quality = float(np.mean([r.quality for r in positives])) if positives else 0.0
    fp_rate = float(np.mean([r.predicted > 0 for r in negatives])) if negatives else 0.0
    matched = sum(r.matched for r in positives)
    return SplitScore(
        score=quality - config.negative_penalty * fp_rate,
        quality=quality,
        false_positive_rate=fp_rate,
        recall=matched / max(sum(r.instances for r in positives), 1),
        precision=matched / max(sum(r.predicted for r in positives), 1),
        mean_iou=sum(r.matched_iou for r in positives) / max(matched, 1),
    )


def greedy_matching(credit: mx.array) -> mx.array:
    """[B, Q, N] pair values -> [B, Q, N] 0/1: the exact score's greedy one-to-one matching
    (``_greedy_match``) of queries to instances, by descending value, positive values only.
    N rounds of whole-array operations, no data-dependent branch, so that it compiles."""
    batch, queries, instances = credit.shape
    free = credit.reshape(batch, -1)
    matched = mx.zeros_like(free)
    pair = mx.arange(queries * instances)[None]  # flat index of each (query, instance)
    for _ in range(instances):
        pick = mx.argmax(free, axis=-1, keepdims=True)  # [B, 1]
        worth = mx.take_along_axis(free, pick, axis=-1) > 0
        taken = (pair // instances == pick // instances) | (pair % instances == pick % instances)  # its row and column
        matched = mx.where((pair == pick) & worth, 1.0, matched)
        free = mx.where(taken, -1.0, free)
    return matched.reshape(credit.shape).astype(credit.dtype)


def surrogate(
    scores: mx.array,
    mask_logits: mx.array,
    targets: mx.array,
    instance_valid: mx.array,
    keep: mx.array,
    crowd: mx.array,
    config: ObjectiveConfig,
) -> mx.array:
    """Differentiable stand-in for the split score over B (prompt, image) pairs, to maximise.

    scores [B, Q] official scores; mask_logits [B, Q, h, w]; targets [B, N, h, w] float 0/1,
    padded to the largest instance count N with ``instance_valid`` [B, N] False; keep [B, h, w]
    float, 0 on ignored pixels (``MaskTarget.ignored``); crowd [B, h, w] float, 1 in crowd
    regions. A pair with no valid instance is a negative. The config's temperatures must be set
    (``calibrate``)."""
    if config.temperature is None or config.mask_temperature is None:
        raise ValueError("the surrogate's temperatures are not set: calibrate them or give them")
    weight = mx.sigmoid((scores - config.threshold) / config.temperature)  # soft "is predicted"
    masks = mx.sigmoid(mask_logits / config.mask_temperature).reshape(*mask_logits.shape[:2], -1)
    probs = masks * keep.reshape(keep.shape[0], 1, -1)
    truth = targets.reshape(*targets.shape[:2], -1)
    inter = probs @ truth.swapaxes(1, 2)  # [B, Q, N]
    union = probs.sum(-1)[..., None] + truth.sum(-1)[:, None] - inter
    soft_iou = inter / mx.maximum(union, 1e-6)
    valid = instance_valid.astype(scores.dtype)
    credit = weight[..., None] * soft_iou * valid[:, None]  # [B, Q, N]
    matching = greedy_matching(mx.stop_gradient(credit))
    found = (credit * matching).sum(1)  # per instance, its query's
    count = valid.sum(-1)
    in_crowd = (masks @ crowd.reshape(crowd.shape[0], -1, 1))[..., 0] >= CROWD_SHARE * masks.sum(-1)
    dropped = mx.stop_gradient(in_crowd & (matching.sum(-1) == 0))
    # at least 1 on a positive; on a negative (quality unused) the floor keeps 0/0 out of the
    # gradient where every soft weight has underflowed to 0 (scores far below the threshold)
    quality = 2 * found.sum(-1) / mx.maximum(mx.where(dropped, 0.0, weight).sum(-1) + count, 1e-6)
    # a negative image has a prediction exactly when its highest score passes the threshold
    any_prediction = mx.sigmoid((scores.max(-1) - config.threshold) / config.temperature)
    positive = (count > 0).astype(scores.dtype)
    mean_quality = (quality * positive).sum() / mx.maximum(positive.sum(), 1)
    fp_rate = (any_prediction * (1 - positive)).sum() / mx.maximum((1 - positive).sum(), 1)
    return mean_quality - config.negative_penalty * fp_rate
