"""Which token ids a search may use, and the map from continuous vectors back to real tokens.

``allowed_tokens`` excludes the ids SAM3 cannot take inside an alias: 0 (the real token "!",
but read as padding by SAM3) and the start/end tokens. With ``roundtrip_only`` it also keeps
only ids whose text re-tokenizes to that id alone, so that an alias can be written down as
text; a per-token filter, cheap to apply to a whole vocabulary (whole aliases still need
``Tokenizer.roundtrips``: two such tokens side by side may merge).

``TokenIndex`` finds the allowed tokens nearest to arbitrary vectors in the embedding space,
which is how a soft prompt is projected to a hard one (PEZ); ``principal_span`` the subspace
that real tokens occupy, where a soft prompt is kept.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np

from mlx_alias.tokenizer import Tokenizer


@functools.lru_cache(maxsize=4)
def _roundtrip_mask(tokenizer: Tokenizer) -> np.ndarray:
    """bool [vocab]: ids whose decoded text encodes back to exactly [id]. About 3 s over the
    49,408 ids (``ftfy`` cleaning dominates), so it is computed once per tokenizer, and
    ``load_tokenizer`` shares one tokenizer per vocabulary file. Only word-final tokens
    survive: "piano" without its end-of-word mark decodes to the same text as "piano</w>"."""
    mask = np.zeros(tokenizer.vocab_size, bool)
    for i in range(1, tokenizer.sot_id):
        mask[i] = tokenizer.encode(tokenizer.decode([i])) == [i]
    mask.flags.writeable = False  # shared by every caller
    return mask


def allowed_tokens(tokenizer: Tokenizer, roundtrip_only: bool = False) -> np.ndarray:
    """bool [vocab]: ids an alias may use; never padding (0), start or end."""
    allowed = np.ones(tokenizer.vocab_size, bool)
    allowed[[tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id]] = False
    if roundtrip_only:
        allowed &= _roundtrip_mask(tokenizer)
    return allowed


class TokenIndex:
    """Nearest allowed tokens to vectors of the embedding space, by cosine similarity.

    Cosine rather than Euclidean distance or a dot product: token embedding norms vary widely
    (with token frequency in CLIP), so the raw dot product favours large-norm tokens and the
    Euclidean distance small-norm ones wherever a vector lies; the direction is what a
    projection should keep. PEZ (Wen et al., 2023) projects the same way."""

    def __init__(self, table: mx.array, allowed: np.ndarray):
        if table.shape[0] != allowed.shape[0]:
            raise ValueError(f"table has {table.shape[0]} rows but the allowed mask {allowed.shape[0]}")
        if not allowed.any():
            raise ValueError("no token is allowed")
        table = table.astype(mx.float32)
        # Normalised once; a disallowed row can never win (its similarity is -inf).
        self.normalised = table / mx.maximum(mx.linalg.norm(table, axis=-1, keepdims=True), 1e-12)
        self.blocked = mx.where(mx.array(allowed), 0.0, -mx.inf)
        self.count = int(allowed.sum())

    def nearest(self, vectors: mx.array | np.ndarray, k: int = 1) -> np.ndarray:
        """Vectors [L, width] -> int [L, k]: the k most similar allowed ids, most similar first."""
        if not 1 <= k <= self.count:
            raise ValueError(f"k must lie in [1, {self.count}] (the allowed tokens), got {k}")
        vectors = mx.array(vectors).astype(mx.float32)
        unit = vectors / mx.maximum(mx.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        similarity = unit @ self.normalised.T + self.blocked  # one matmul [L, vocab]
        if k == 1:
            return np.array(mx.argmax(similarity, axis=-1))[:, None]
        top = mx.argpartition(-similarity, k - 1, axis=-1)[:, :k]
        order = mx.argsort(-mx.take_along_axis(similarity, top, axis=-1), axis=-1)
        return np.array(mx.take_along_axis(top, order, axis=-1))

    def project(self, vectors: mx.array | np.ndarray) -> tuple[int, ...]:
        """Vectors [L, width] -> the nearest allowed id of each, as an alias."""
        return tuple(int(i) for i in self.nearest(vectors, 1)[:, 0])


def principal_span(table: mx.array, energy: float) -> mx.array | None:
    """[width, width]: the orthogonal projector onto the fewest principal directions of the
    embedding table that hold ``energy`` of its squared norm, or None when that takes them all.
    Real tokens lie in this span but for ``1 - energy`` of their squared norm, so a soft prompt
    kept inside it cannot lean on directions that its projection to real tokens throws away."""
    if energy >= 1.0:
        return None
    rows = np.array(table.astype(mx.float32), np.float64)
    values, vectors = np.linalg.eigh(rows.T @ rows)  # ascending
    kept = np.cumsum(values[::-1]) / values.sum()
    rank = int(np.searchsorted(kept, energy)) + 1
    if rank >= rows.shape[1]:
        return None
    basis = vectors[:, ::-1][:, :rank]
    return mx.array((basis @ basis.T).astype(np.float32))
