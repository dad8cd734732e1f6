"""Validation of the scene world's tiny SAM3 during and after training: each of the model's
words as a prompt on unseen scenes (the ``count`` first of the stream of a run's ``seed``, never
trained on), scored with the project's objective at sam3's threshold 0.5, random captions from
outside the vocabulary, each word's separation of the objects it names from the others, and a
few captions of two values of one attribute (``EITHER``), which cover the objects with either."""

from __future__ import annotations

import numpy as np
import torch

from mlx_alias.image import preprocess
from mlx_alias.scenes.concepts import WORDS
from mlx_alias.scenes.world import SIZE, scene
from mlx_alias.search.objective import MaskTarget, ObjectiveConfig, aggregate, area_resize, score_image
from mlx_alias.tokenizer import CONTEXT_LENGTH, Tokenizer

from . import runners

VALIDATION_SEED = 10**9  # validation scenes come from their own stream, never trained on
# two values of one attribute in one caption (``training_queries``' ``either``), on the benchmark's
# composites' lines (warm, cool, pointy) and one pattern
EITHER = (
    ("colour", "red", "yellow"),
    ("colour", "blue", "green"),
    ("shape", "star", "triangle"),
    ("pattern", "striped", "dotted"),
)


def frame_caption(tokenizer: Tokenizer, ids: tuple[int, ...]) -> np.ndarray:
    """A caption's content tokens in the text encoder's frame (start, end, padding)."""
    return tokenizer.from_content_ids(ids, CONTEXT_LENGTH)[0]


def object_scores(scores: np.ndarray, logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per object of a scene ([N, h, w] masks at the logits' size), the highest score among
    one prompt's queries ([Q] scores, [Q, h, w] mask logits) whose mask covers it with IoU above
    0.5, or 0 where none does."""
    predicted = (logits > 0).reshape(len(logits), -1).astype(np.float32)
    truth = masks.reshape(len(masks), -1).astype(np.float32)
    inter = predicted @ truth.T
    iou = inter / np.maximum(predicted.sum(1)[:, None] + truth.sum(1)[None] - inter, 1)
    return np.where(iou > 0.5, scores[:, None], 0.0).max(0, initial=0.0)


def separation(positive: list[float], negative: list[float]) -> float:
    """The probability that a random object with the attribute outscores one without (ties half):
    the ROC AUC, 0.5 for a word the model does not tell apart, whatever its threshold."""
    if not positive or not negative:
        return float("nan")
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def validate(
    model: torch.nn.Module, seed: int, count: int, tokenizer: Tokenizer, pool: np.ndarray, mask_size: int
) -> dict[str, float]:
    """The project's objective at sam3's threshold 0.5 on unseen scenes: each of the model's
    words as a category, and random captions from outside its vocabulary; and per word, how well
    its scores separate the objects it names from the others (``separation``), which shows a
    word being learned before its scores pass the threshold; and the ``EITHER`` captions, each
    covering the objects with one of its two values."""
    rng = np.random.default_rng(VALIDATION_SEED + seed)
    scenes = [scene(rng) for _ in range(count)]
    captions = [(word, attribute, (value,)) for attribute, words in WORDS.items() for value, word in words.items()]
    words = len(captions)
    captions += [(f"{WORDS[a][v]} {WORDS[a][w]}", a, (v, w)) for a, v, w in EITHER]
    randoms = [tuple(int(i) for i in rng.choice(pool, 2)) for _ in range(8)]
    pixels = torch.from_numpy(np.stack([preprocess(sc.image, SIZE) for sc in scenes]).transpose(0, 3, 1, 2).copy())
    ids = np.stack(
        [frame_caption(tokenizer, tuple(tokenizer.encode(w))) for w, _, _ in captions]
        + [frame_caption(tokenizer, r) for r in randoms]
    )
    objective = ObjectiveConfig(threshold=0.5)
    results: list[list] = [[] for _ in ids]
    named: dict[str, tuple[list, list]] = {w: ([], []) for w, _, _ in captions[:words]}  # objects without, with
    with torch.no_grad():
        features = runners.image_features(model, pixels)
        text = runners.text_features_from_ids(model, torch.from_numpy(ids))
        for i, sc in enumerate(scenes):
            out = runners.ground(model, features, text, torch.full((len(ids),), i))
            scores, logits = out["scores"].numpy(), out["pred_masks"].numpy()
            objects = area_resize(sc.masks, *logits.shape[-2:])
            for c in range(len(ids)):
                if c < len(captions):
                    name, attribute, values = captions[c]
                    has = [t.value(attribute) in values for t in sc.things]
                    if c < words:
                        for thing_has, best in zip(has, object_scores(scores[c], logits[c], objects)):
                            named[name][thing_has].append(float(best))
                    covered = sc.masks[has]
                else:
                    covered = sc.masks[:0]
                target = MaskTarget(area_resize(covered, mask_size, mask_size), np.zeros((mask_size, mask_size), bool))
                results[c].append(score_image(scores[c], logits[c], target, objective))
    per_word = {captions[c][0]: aggregate(results[c], objective).score for c in range(words)}
    either = {captions[c][0]: aggregate(results[c], objective).score for c in range(words, len(captions))}
    random_scores = [aggregate(results[len(captions) + r], objective).score for r in range(len(randoms))]
    return {
        "words_median": float(np.median(list(per_word.values()))),
        "random_max": float(max(random_scores)),
        "random_median": float(np.median(random_scores)),
        "either_median": float(np.median(list(either.values()))),
        **{f"word/{w}": s for w, s in per_word.items()},
        **{f"either/{w}": s for w, s in either.items()},
        **{f"separation/{w}": separation(with_it, without) for w, (without, with_it) in named.items()},
    }
