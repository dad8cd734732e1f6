"""How many (candidate, image) pairs one grounding call may take: measured on the model and an
image at hand, against the memory MLX may still allocate (``mx.get_memory_limit``: on a Mac
the GPU's recommended working set, elsewhere a share of RAM or device memory)."""

from __future__ import annotations

import mlx.core as mx

from mlx_alias.model.sam3 import ImageFeatures, Sam3
from mlx_alias.tokenizer import load_tokenizer

MEMORY_SHARE = 0.5  # the rest is left to the soft-prompt step, caches and other processes
# A cap: racing scores in rounds of at least a batch, so an unbounded batch (a tiny model's pair
# is 16.5 MB) would score every raced candidate on nearly every image.
MOST_PAIRS = 256


def pairs_that_fit(model: Sam3, image: ImageFeatures, share: float = MEMORY_SHARE, most: int = MOST_PAIRS) -> int:
    """The most pairs whose grounding, masks of every pair included, fits in ``share`` of the
    memory MLX may still allocate; from the peaks of two and of four pairs on ``image``'s first
    image (grounding's memory grows linearly with the pairs). At least 1, at most ``most``."""
    _grounding_peak(model, image, 1)  # the first call also allocates what later calls reuse
    two, four = (_grounding_peak(model, image, pairs) for pairs in (2, 4))
    per_pair = max((four - two) // 2, 1)
    room = share * (mx.get_memory_limit() - mx.get_active_memory()) - max(two - 2 * per_pair, 0)
    return int(min(most, max(1, room // per_pair)))


def _grounding_peak(model: Sam3, image: ImageFeatures, pairs: int) -> int:
    """Bytes beyond those already in use that grounding ``pairs`` prompts on the first image
    allocates at its peak."""
    first = model.prepare(ImageFeatures([level[:1] for level in image.levels], image.positions))
    text = model.encode_text(mx.array(load_tokenizer()(["probe"] * pairs)))
    mx.eval(first.geometry, first.attended, text.memory, text.padding)
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    detection = model.detect(first, text, mx.zeros((pairs,), mx.int32))
    masks, semantic = model.segment(first, detection)
    mx.eval(detection.scores, masks, semantic)
    return mx.get_peak_memory() - base
