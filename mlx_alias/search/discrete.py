"""The discrete refinement phases: search over token ids with exact scores only.

``GcgPhase`` is greedy coordinate gradient (Zou et al. 2023, as in nanoGCG): the surrogate's
gradient with respect to the one-hot token matrix ranks, per position, the tokens whose swap
should help most; a batch of random swaps among those is scored exactly and the best is kept
only if it improves (AutoPrompt/ARCA). ``EvolutionPhase`` is a gradient-free genetic search:
elitism, tournament selection, uniform crossover and mutations to random or embedding-neighbour
tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_alias.model.text import padding_of

from .phase import Candidate, SearchContext, pack, unpack

Tokens = tuple[int, ...]


def largest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries along the last axis, largest first."""
    top = np.argpartition(-values, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(values, top, -1), axis=-1, kind="stable")
    return np.take_along_axis(top, order, -1)


def token_gradients(ctx: SearchContext, tokens: Tokens, table: mx.array) -> np.ndarray:
    """The surrogate's gradient with respect to the one-hot matrix of ``tokens``: [L, vocab].

    The alias is framed as the model reads it (start, tokens, end, padding); since the input
    embeddings are one_hot @ table, d/d(one_hot) = d/d(embeddings) @ table.T on the content rows."""
    ids = mx.array(ctx.tokenizer.from_content_ids(tokens))
    padding = padding_of(ids)
    grad = mx.grad(lambda e: ctx.surrogate(e, padding))(ctx.model.token_embeddings(ids))
    return np.array(grad[0, 1 : 1 + len(tokens)].astype(mx.float32) @ table.T)


def top_tokens(gradient: np.ndarray, allowed: np.ndarray, tokens: Tokens, k: int) -> np.ndarray:
    """[L, k] per position: the allowed ids (``allowed`` [vocab], or [L, vocab] per position)
    other than the current one with the largest gradient (we maximise), largest first."""
    masked = np.where(allowed, gradient, -np.inf)
    masked[np.arange(len(tokens)), list(tokens)] = -np.inf
    return largest(masked, min(k, int(np.isfinite(masked).sum(1).min())))


@dataclass(frozen=True)
class GcgConfig:
    steps: int = 100  # most steps
    patience: int = 10  # steps without improvement before stopping
    candidates: int = 64  # swaps sampled (then deduplicated) and scored exactly per step
    top_k: int = 16  # tokens per position to sample from, by one-hot gradient
    swaps_per_candidate: int = 1  # positions changed per candidate
    # When > 0, a position's top-k is drawn from its token's nearest allowed tokens by cosine:
    # the one-hot gradient is a linear estimate, trustworthy near the current token.
    neighbours: int = 64
    # With neighbours, also this many per position from the gradient's top over the rest of the
    # vocabulary: in a trained model it points to a far word that means the concept, which no
    # neighbour reaches (docs/method.md, "Phases").
    far: int = 64


class GcgPhase:
    name = "gcg"

    def __init__(self, ctx: SearchContext, config: GcgConfig, start: Candidate):
        self.ctx, self.config = ctx, config
        self.current = start
        self.steps = 0
        self.stale = 0  # steps since the last improvement
        self.rng = ctx.phase_rng()
        self._table: mx.array | None = None
        self._near: Neighbours | None = None
        self._top: np.ndarray | None = None  # top tokens of ``current``: the same until it changes

    @property
    def done(self) -> bool:
        return self.steps >= self.config.steps or self.stale >= self.config.patience

    @property
    def best(self) -> Candidate:
        return self.current  # only improvements are accepted

    def top(self) -> np.ndarray:
        """[L, k] candidate tokens per position of the current alias (the neighbours' top-k, then
        the far top-k)."""
        if self._top is None:
            if self._table is None:
                self._table = self.ctx.embeddings().astype(mx.float32)
            gradient = token_gradients(self.ctx, self.current.tokens, self._table)
            tokens, cfg, allowed = self.current.tokens, self.config, self.ctx.allowed
            near = self.near_mask() if cfg.neighbours else allowed
            pools = [top_tokens(gradient, near, tokens, cfg.top_k)]
            if cfg.neighbours and cfg.far:  # disjoint from the neighbours' pool
                pools.append(top_tokens(gradient, allowed & ~near, tokens, cfg.far))
            self._top = np.concatenate(pools, axis=1)
        return self._top

    def near_mask(self) -> np.ndarray:
        """bool [L, vocab]: each position's token's allowed embedding neighbours."""
        if self._near is None:
            self._near = Neighbours(self._table, self.ctx.allowed, self.config.neighbours)
        near = np.zeros((len(self.current.tokens), len(self.ctx.allowed)), bool)
        for position, token in enumerate(self.current.tokens):
            near[position, self._near(token)] = True
        return near

    def sample(self, top: np.ndarray) -> list[Tokens]:
        """Distinct candidates, each the current alias with ``swaps_per_candidate`` positions
        (uniform, distinct) set to a token drawn uniformly from that position's top-k."""
        length, k = top.shape
        swaps = min(self.config.swaps_per_candidate, length)
        out = []
        for _ in range(min(self.config.candidates, self.ctx.affordable())):
            tokens = list(self.current.tokens)
            for position in self.rng.choice(length, size=swaps, replace=False):
                tokens[position] = int(top[position, self.rng.integers(k)])
            out.append(tuple(tokens))
        return list(dict.fromkeys(out))

    def step(self) -> list[Candidate]:
        # only a swap that beats the current alias is kept, so the others are raced out early
        scored = self.ctx.evaluate(self.sample(self.top()), bar=self.current.score)
        challenger = max(scored, key=lambda c: c.score, default=self.current)  # the first of equals
        if challenger.score > self.current.score:
            self.current, self.stale, self._top = challenger, 0, None
        else:
            self.stale += 1
        self.steps += 1
        return scored

    def state(self) -> dict[str, Any]:
        return {
            "current": pack(self.current),
            "steps": self.steps,
            "stale": self.stale,
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.current = unpack(state["current"])
        self.steps, self.stale = int(state["steps"]), int(state["stale"])
        self.rng.bit_generator.state = state["rng"]
        self._top = None


class Neighbours:
    """The ``k`` allowed ids nearest a token by cosine in the embedding table, computed on first
    use per token and cached (one [vocab] product each)."""

    def __init__(self, table: mx.array, allowed: np.ndarray, k: int):
        table = table.astype(mx.float32)
        self.unit = table / mx.maximum(mx.linalg.norm(table, axis=1, keepdims=True), 1e-12)
        self.allowed, self.k = allowed, k
        self.cache: dict[int, np.ndarray] = {}

    def __call__(self, token: int) -> np.ndarray:
        if token not in self.cache:
            similarity = np.where(self.allowed, np.array(self.unit @ self.unit[token]), -np.inf)
            similarity[token] = -np.inf
            self.cache[token] = largest(similarity, min(self.k, int(np.isfinite(similarity).sum())))
        return self.cache[token]


@dataclass(frozen=True)
class EvolutionConfig:
    generations: int = 50  # most generations
    patience: int = 10  # generations without a better best before stopping
    population: int = 16
    elite: int = 2  # best members copied unchanged into the next generation
    tournament: int = 3  # members drawn per parent selection; the best of them is the parent
    crossover: float = 0.5  # chance a child mixes two equal-length parents (uniform crossover)
    mutations: int = 1  # token swaps per child
    neighbour_fraction: float = 0.5  # chance a swap picks an embedding neighbour, not a random token
    neighbours: int = 16  # nearest allowed tokens by cosine a neighbour swap picks from
    retries: int = 4  # extra swaps for a child that duplicates a member or a sibling
    batch_evaluation: bool = True  # one ctx.evaluate call per generation, else one per child
    # True: (mu + lambda) survival, the best ``population`` of parents and children, so that a
    # child is scored only until it surely cannot beat the weakest parent (``Scorer.race``).
    # False: generational, the elite plus every child, all scored in full.
    race: bool = True


class EvolutionPhase:
    name = "evolution"

    def __init__(self, ctx: SearchContext, config: EvolutionConfig, start: list[Candidate]):
        if config.elite < 1:
            raise ValueError("elite must be at least 1 so that the best survives")
        self.ctx, self.config = ctx, config
        distinct = {c.tokens: c for c in start}.values()
        self.population = _ranked(list(distinct))[: config.population]  # grows to size in one generation
        self._best = self.population[0]
        self.generations = 0
        self.stale = 0  # generations since the best last improved
        self.rng = ctx.phase_rng()
        self.allowed_ids = np.flatnonzero(ctx.allowed)
        self._neighbours: Neighbours | None = None

    @property
    def done(self) -> bool:
        return self.generations >= self.config.generations or self.stale >= self.config.patience

    @property
    def best(self) -> Candidate:
        return self._best

    def neighbours(self, token: int) -> np.ndarray:
        if self._neighbours is None:
            self._neighbours = Neighbours(self.ctx.embeddings(), self.ctx.allowed, self.config.neighbours)
        return self._neighbours(token)

    def select(self) -> Candidate:
        """Tournament: the best of ``tournament`` members drawn uniformly (with replacement)."""
        drawn = self.rng.integers(len(self.population), size=self.config.tournament)
        return self.population[int(drawn.min())]  # the population is ranked best first

    def mutate(self, tokens: list[int], swaps: int) -> None:
        for _ in range(swaps):
            position = int(self.rng.integers(len(tokens)))
            if self.rng.random() < self.config.neighbour_fraction:
                near = self.neighbours(tokens[position])
                tokens[position] = int(near[self.rng.integers(len(near))])
            else:
                tokens[position] = int(self.allowed_ids[self.rng.integers(len(self.allowed_ids))])

    def child(self, taken: set[Tokens]) -> Tokens:
        a, b = self.select(), self.select()
        tokens = list(a.tokens)
        if len(a.tokens) == len(b.tokens) and self.rng.random() < self.config.crossover:
            from_b = self.rng.random(len(tokens)) < 0.5
            tokens = [y if pick else x for x, y, pick in zip(a.tokens, b.tokens, from_b)]
        self.mutate(tokens, self.config.mutations)
        for _ in range(self.config.retries):  # a duplicate teaches nothing: swap once more
            if tuple(tokens) not in taken:
                break
            self.mutate(tokens, 1)
        return tuple(tokens)

    def step(self) -> list[Candidate]:
        elite = self.population[: self.config.elite]
        taken = {c.tokens for c in self.population}
        children = []
        for _ in range(min(self.config.population - len(elite), self.ctx.affordable())):
            children.append(self.child(taken))
            taken.add(children[-1])
        full = len(self.population) >= self.config.population
        bar = self.population[-1].score if self.config.race and full else None
        if self.config.batch_evaluation:
            scored = self.ctx.evaluate(children, bar)
        else:
            scored = [c for child in children for c in self.ctx.evaluate([child], bar)]
        survivors = self.population if self.config.race else elite
        distinct = {c.tokens: c for c in survivors + scored}.values()  # a child may repeat a member
        self.population = _ranked(list(distinct))[: self.config.population]
        if self.population[0].score > self._best.score:
            self._best, self.stale = self.population[0], 0
        else:
            self.stale += 1
        self.generations += 1
        return scored

    def state(self) -> dict[str, Any]:
        return {
            "population": [pack(c) for c in self.population],
            "best": pack(self._best),
            "generations": self.generations,
            "stale": self.stale,
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.population = [unpack(c) for c in state["population"]]
        self._best = unpack(state["best"])
        self.generations, self.stale = int(state["generations"]), int(state["stale"])
        self.rng.bit_generator.state = state["rng"]


def _ranked(candidates: list[Candidate]) -> list[Candidate]:
    """Best first; equals keep their order (elites before children)."""
    return sorted(candidates, key=lambda c: -c.score)
