"""How many (candidate, image) pairs one grounding call may take: measured on the model and an
image at hand, against the memory MLX may still allocate (``mx.get_memory_limit``: on a Mac
the GPU's recommended working set, elsewhere a share of RAM or device memory)."""

from __future__ import annotations

import gc

import mlx.core as mx

from mlx_alias.data.coco import Dataset
from mlx_alias.model.sam3 import ImageFeatures, Sam3
from mlx_alias.tokenizer import load_tokenizer

from .cache import FeatureCache

MEMORY_SHARE = 0.5  # the rest is left to the soft-prompt step, caches and other processes
# A cap: racing scores in rounds of at least a batch, so an unbounded batch (a tiny model's pair
# is 16.5 MB) would score every raced candidate on nearly every image.
MOST_PAIRS = 256


def pairs_for(model: Sam3, cache: FeatureCache, dataset: Dataset) -> int:
    """``pairs_that_fit`` on the dataset's first image."""
    return pairs_that_fit(model, cache.get([next(iter(dataset.images.values())).path]))


def pairs_that_fit(model: Sam3, image: ImageFeatures, share: float = MEMORY_SHARE, most: int = MOST_PAIRS) -> int:
    """The most pairs whose grounding, masks of every pair included, fits in ``share`` of the
    memory MLX may still allocate; from the peaks of two and of four pairs on ``image``'s first
    image (grounding's memory grows linearly with the pairs). At least 1, at most ``most``."""
    gc.collect()  # arrays that only a reference cycle holds count as in use until the collector runs
    first = first_image(model, image)
    _grounding_peak(model, first, 1)  # the first call also allocates what later calls reuse
    two, four = (_grounding_peak(model, first, pairs) for pairs in (2, 4))
    per_pair = max((four - two) // 2, 1)
    room = share * (mx.get_memory_limit() - mx.get_active_memory()) - max(two - 2 * per_pair, 0)
    return int(min(most, max(1, room // per_pair)))


def first_image(model: Sam3, image: ImageFeatures) -> ImageFeatures:
    """The first image's features, prepared (``Sam3.prepare``) as the scorer grounds them."""
    first = model.prepare(ImageFeatures([level[:1] for level in image.levels], image.positions))
    mx.eval(first.prepared())
    return first


def _grounding_peak(model: Sam3, first: ImageFeatures, pairs: int) -> int:
    """Bytes beyond those already in use that grounding ``pairs`` prompts on one prepared image
    (``first_image``) allocates at its peak."""
    text = model.encode_text(mx.array(load_tokenizer()(["probe"] * pairs)))
    mx.eval(text.memory, text.padding)
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    detection = model.detect(first, text, mx.zeros((pairs,), mx.int32))
    masks, semantic = model.segment(first, detection)
    mx.eval(detection.scores, masks, semantic)
    return mx.get_peak_memory() - base
