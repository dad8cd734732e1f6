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

from .objective import ObjectiveConfig
from .scorer import Pruned, Scorer


@dataclass(frozen=True)
class Candidate:
    tokens: tuple[int, ...]  # content ids, without start/end
    score: float  # exact score on the training images


def pack(c: Candidate) -> dict[str, Any]:
    """A candidate as JSON values, for a phase's ``state()``."""
    return {"tokens": list(c.tokens), "score": c.score}


def unpack(d: dict[str, Any]) -> Candidate:
    return Candidate(tuple(int(t) for t in d["tokens"]), float(d["score"]))


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
    bounds: dict[tuple[int, ...], float] = field(default_factory=dict)  # raced out: score at most this
    limit: int | None = None  # the scorer's evaluation count the current phase may reach
    # the gradient phases' objective: the scorer's, its surrogate temperatures set (``Scorer.calibrated``)
    objective: ObjectiveConfig | None = None

    def surrogate(self, embeddings: mx.array, padding: mx.array, images: mx.array | None = None) -> mx.array:
        """``Scorer.surrogate`` under our objective (the scorer's own where we hold none)."""
        return self.scorer.surrogate(embeddings, padding, self.objective, images)

    def phase_rng(self) -> np.random.Generator:
        """A phase-own generator, so its state alone makes a continuation bit-identical."""
        return np.random.default_rng(int(self.rng.integers(2**63)))

    def affordable(self) -> int:
        """How many more candidates the budget pays for (at least one, so a step always moves)."""
        if self.limit is None:
            return 1 << 30
        return max(1, (self.limit - self.scorer.evaluations) // self.scorer.images)

    def evaluate(self, candidates: list[tuple[int, ...]], bar: float | None = None) -> list[Candidate]:
        """Exact scores, each distinct candidate scored once per run (repeats are free).

        With ``bar``, only candidates that score above it are worth knowing: the others are
        raced (``Scorer.race``), dropped once their bound shows they cannot pass, and left out of
        the result; a candidate dropped before under a bar as high costs nothing again. The
        result may include earlier exact scores at or below ``bar``."""
        fresh = list(
            dict.fromkeys(
                c
                for c in candidates
                if c not in self.seen and not (bar is not None and self.bounds.get(c, np.inf) <= bar)
            )
        )
        if fresh:
            ids = ids_of(self.tokenizer, fresh)
            results = self.scorer.exact(ids) if bar is None else self.scorer.race(ids, bar)
            for tokens, result in zip(fresh, results):
                if isinstance(result, Pruned):
                    self.bounds[tokens] = min(result.bound, self.bounds.get(tokens, np.inf))
                else:
                    self.seen[tokens] = result.score
        return [Candidate(c, self.seen[c]) for c in candidates if c in self.seen]

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
