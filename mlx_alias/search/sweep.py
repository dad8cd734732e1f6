"""The vocabulary sweep: every allowed token, as an alias of that token alone (repeated to the
alias length), screened on a positive training image or a few; the best of them raced on all; then,
for aliases of two or more tokens, pairs of the best screened raced against the best single.

In a trained model the best alias is often one word the model learned for what the dataset
calls by another name; from random starts the surrogate's gradient barely ranks it (docs/method.md,
"Phases"), while a screen of the whole vocabulary finds it at one evaluation a token and image.
The screen keeps a token only if it earns some quality on the screen images (a correct mask on
a positive image); the kept tokens, best first, are then raced on every training image against
the best alias so far, so that the phases after it start from the winners. A category that no
single word covers (star and triangle, say) may be covered by two words side by side, which
neither evolution nor GCG reaches from a single word's alias in a step: hence the pairs.

Its cost is fixed by the vocabulary, not a share of the budget: ``sweep_cost`` evaluations at
most, counted in the budget, after which the other phases share what is left. It runs in a
search's first round only: a later round would screen the same tokens on the same images again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .phase import Candidate, SearchContext, ids_of, pack, unpack

STAGES = ("screen", "singles", "pairs", "done")


@dataclass(frozen=True)
class SweepConfig:
    # positive training images each token is screened on: two found nothing more than one on the
    # scene model's benchmark, at twice the cost (benchmarks/results/2026-12-05-sweep-pairs.md)
    images: int = 1
    keep: int = 64  # most screened tokens then raced on every training image, best screened first
    pairs: int = 8  # the best screened tokens whose ordered pairs are raced (aliases of 2+ tokens)
    chunk: int = 1024  # tokens screened per step (the search checkpoints after each)


def pair_count(config: SweepConfig, length: int) -> int:
    """Ordered pairs of distinct tokens raced for aliases of ``length`` tokens."""
    return config.pairs * (config.pairs - 1) if length > 1 else 0


def sweep_cost(allowed: np.ndarray, positives: int, images: int, config: SweepConfig, length: int) -> int:
    """Most evaluations a sweep spends: every allowed token on its screen images, then ``keep``
    tokens and the pairs on all ``images``."""
    return int(allowed.sum()) * min(config.images, positives) + (config.keep + pair_count(config, length)) * images


def scorer_sweep_cost(allowed: np.ndarray, scorer: Any, config: SweepConfig, length: int) -> int:
    """``sweep_cost`` on a training scorer's images, screening among its positive ones."""
    positives = sum(target.masks.shape[0] > 0 for target in scorer.targets)
    return sweep_cost(allowed, positives, scorer.images, config, length)


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
        self.raced: list[Candidate] = []  # singles, then pairs, that the races scored whole (not pruned)
        self.stage = "screen" if self.images else "done"  # nothing to screen on without a positive image

    @property
    def done(self) -> bool:
        return self.stage == "done"

    @property
    def best(self) -> Candidate | None:
        return max(self.raced, key=lambda c: c.score, default=None)

    def alias(self, token: int) -> tuple[int, ...]:
        return (token,) * self.ctx.length

    def pair(self, first: int, second: int) -> tuple[int, ...]:
        """The alias of two tokens: the first fills its first half (rounded up), the second the rest."""
        half = (self.ctx.length + 1) // 2
        return (first,) * half + (second,) * (self.ctx.length - half)

    def ranked(self) -> list[int]:
        """The kept tokens, best screened first."""
        return sorted(self.kept, key=lambda t: (-self.kept[t], t))

    def screen_room(self) -> int:
        """Tokens the budget still pays to screen, keeping what the races need."""
        if self.ctx.limit is None:
            return len(self.order)
        races = self.config.keep + pair_count(self.config, self.ctx.length)
        left = self.ctx.limit - self.ctx.scorer.evaluations - races * self.ctx.scorer.images
        return left // len(self.images)

    def step(self) -> list[Candidate]:
        if self.stage == "screen":
            room = self.screen_room()
            if self.position < len(self.order) and room > 0:
                chunk = self.order[self.position : self.position + min(self.config.chunk, room)]
                aliases = ids_of(self.ctx.tokenizer, [self.alias(t) for t in chunk])
                quality = self.ctx.scorer.screen(aliases, self.images)
                self.kept.update({int(t): float(q) for t, q in zip(chunk, quality) if q > 0})
                self.position += len(chunk)
                return []
            self.stage = "singles"
        if self.stage == "singles":
            singles = self.ranked()[: min(self.config.keep, self.ctx.affordable())]
            self.raced = self.ctx.evaluate([self.alias(t) for t in singles], bar=self.bar)
            self.stage = "pairs" if pair_count(self.config, self.ctx.length) else "done"
            return self.raced
        tops = self.ranked()[: self.config.pairs]
        pairs = [self.pair(a, b) for a, b in itertools.permutations(tops, 2)][: self.ctx.affordable()]
        bar = max([self.bar] + [c.score for c in self.raced])
        won = self.ctx.evaluate(pairs, bar=bar)
        self.raced = self.raced + won  # a new list: the singles' step returned the old one
        self.stage = "done"
        return won

    def state(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "kept": [[t, q] for t, q in self.kept.items()],
            "raced": [pack(c) for c in self.raced],
            "stage": self.stage,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state["stage"] not in STAGES:
            raise ValueError(f"unknown sweep stage {state['stage']!r}")
        self.position = int(state["position"])
        self.kept = {int(t): float(q) for t, q in state["kept"]}
        self.raced = [unpack(c) for c in state["raced"]]
        self.stage = state["stage"]
