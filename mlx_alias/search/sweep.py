"""The vocabulary sweep: every allowed token, as an alias of that token alone (repeated to the
alias length), screened on a few positive training images, then the best of them raced on all.

In a trained model the best alias is often one word the model learned for what the dataset
calls by another name; from random starts the surrogate's gradient barely ranks it (docs/method.md,
"Phases"), while a screen of the whole vocabulary finds it at one evaluation a token and image.
The screen keeps a token only if it earns some quality on the screen images (a correct mask on
a positive image); the kept tokens, best first, are then raced on every training image against
the best alias so far, so that the phases after it start from the winners.

Its cost is fixed by the vocabulary, not a share of the budget: ``sweep_cost`` evaluations at most, counted
in the budget, after which the other phases share what is left. It runs in a search's first
round only: a later round would screen the same tokens on the same images again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .phase import Candidate, SearchContext, ids_of, pack, unpack


@dataclass(frozen=True)
class SweepConfig:
    images: int = 1  # positive training images each token is screened on
    keep: int = 64  # most screened tokens then raced on every training image, best screened first
    chunk: int = 1024  # tokens screened per step (the search checkpoints after each)


def sweep_cost(allowed: np.ndarray, positives: int, images: int, config: SweepConfig) -> int:
    """Most evaluations a sweep spends: every allowed token on its screen images, then ``keep``
    tokens on all ``images``."""
    return int(allowed.sum()) * min(config.images, positives) + config.keep * images


class SweepPhase:
    name = "sweep"

    def __init__(self, ctx: SearchContext, config: SweepConfig, start: list[Candidate]):
        self.ctx, self.config = ctx, config
        rng = ctx.phase_rng()
        positives = [i for i, target in enumerate(ctx.scorer.targets) if target.masks.shape[0] > 0]
        self.images = sorted(int(i) for i in rng.choice(positives, min(config.images, len(positives)), replace=False))
        # a random order, so that a screen the budget cuts short is a uniform sample of the vocabulary
        self.order = rng.permutation(np.flatnonzero(ctx.allowed))
        self.position = 0  # tokens screened so far
        self.kept: dict[int, float] = {}  # token -> screen quality, where above 0
        self.bar = max(c.score for c in start) if start else -np.inf
        self.raced: list[Candidate] = []
        self.finished = not self.images  # nothing to screen on without a positive image

    @property
    def done(self) -> bool:
        return self.finished

    @property
    def best(self) -> Candidate | None:
        return max(self.raced, key=lambda c: c.score, default=None)

    def alias(self, token: int) -> tuple[int, ...]:
        return (token,) * self.ctx.length

    def screen_room(self) -> int:
        """Tokens the budget still pays to screen, keeping what the race needs."""
        if self.ctx.limit is None:
            return len(self.order)
        left = self.ctx.limit - self.ctx.scorer.evaluations - self.config.keep * self.ctx.scorer.images
        return left // len(self.images)

    def step(self) -> list[Candidate]:
        room = self.screen_room()
        if self.position < len(self.order) and room > 0:
            chunk = self.order[self.position : self.position + min(self.config.chunk, room)]
            quality = self.ctx.scorer.screen(ids_of(self.ctx.tokenizer, [self.alias(t) for t in chunk]), self.images)
            self.kept.update({int(t): float(q) for t, q in zip(chunk, quality) if q > 0})
            self.position += len(chunk)
            return []
        ranked = sorted(self.kept, key=lambda t: (-self.kept[t], t))[: min(self.config.keep, self.ctx.affordable())]
        self.raced = self.ctx.evaluate([self.alias(t) for t in ranked], bar=self.bar)
        self.finished = True
        return self.raced

    def state(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "kept": [[t, q] for t, q in self.kept.items()],
            "raced": [pack(c) for c in self.raced],
            "finished": self.finished,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        self.kept = {int(t): float(q) for t, q in state["kept"]}
        self.raced = [unpack(c) for c in state["raced"]]
        self.finished = bool(state["finished"])
