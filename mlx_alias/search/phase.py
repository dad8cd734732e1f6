"""What every search phase shares: candidates, the context a phase runs in, and the step
protocol the driver uses to spend a budget, checkpoint, resume and report progress.

A phase is a class with ``step()`` (one iteration, spending some exact evaluations through
``ctx.scorer``), ``done``, ``best`` and ``state()`` / ``restore(state)``: its whole state as
a dict of JSON-able values and numpy arrays, so that a run killed between two steps resumes
exactly where it stood (random generators included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import mlx.core as mx
import numpy as np

from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import CONTEXT_LENGTH, Tokenizer

from .scorer import Scorer


@dataclass(frozen=True)
class Candidate:
    tokens: tuple[int, ...]  # content ids, without start/end
    score: float  # exact score on the training images


def ids_of(tokenizer: Tokenizer, candidates: list[tuple[int, ...]]) -> np.ndarray:
    """Content id tuples -> framed rows [C, context] (start, ids, end, padding)."""
    return np.concatenate([tokenizer.from_content_ids(c, CONTEXT_LENGTH) for c in candidates])


@dataclass
class SearchContext:
    model: Sam3
    scorer: Scorer  # the training images and the objective
    tokenizer: Tokenizer
    allowed: np.ndarray  # bool [vocab]: ids a candidate may use (never 0, start or end)
    length: int  # alias length in tokens
    rng: np.random.Generator
    seen: dict[tuple[int, ...], float] = field(default_factory=dict)  # exact scores so far
    limit: int | None = None  # the scorer's evaluation count the current phase may reach

    def affordable(self) -> int:
        """How many more candidates the budget pays for (at least one, so a step always moves)."""
        if self.limit is None:
            return 1 << 30
        return max(1, (self.limit - self.scorer.evaluations) // self.scorer.images)

    def evaluate(self, candidates: list[tuple[int, ...]]) -> list[Candidate]:
        """Exact scores, each distinct candidate scored once per run (repeats are free)."""
        fresh = list(dict.fromkeys(c for c in candidates if c not in self.seen))
        if fresh:
            for tokens, result in zip(fresh, self.scorer.exact(ids_of(self.tokenizer, fresh))):
                self.seen[tokens] = result.score
        return [Candidate(c, self.seen[c]) for c in candidates]

    def embeddings(self) -> mx.array:
        """The token embedding table [vocab, width] (read-only for the search)."""
        return self.model.text_encoder.text_model.embeddings.token_embedding.weight


class Phase(Protocol):
    name: str

    @property
    def done(self) -> bool: ...

    @property
    def best(self) -> Candidate | None: ...

    def step(self) -> list[Candidate]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...
