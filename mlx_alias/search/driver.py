"""The search of one category: start candidates, then the phases in turn (soft prompt with
projection, evolution, GCG swaps), each spending its share of the evaluation budget, with the
whole state checkpointed after every step so that a killed run resumes exactly.

Budget: exact evaluations, one candidate scored on one training image. A phase gets its share
plus whatever earlier phases left unspent; the search stops early when a candidate reaches
the objective's maximum (1).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlx_alias.files import atomic_write_bytes
from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import Tokenizer

from .discrete import EvolutionConfig, EvolutionPhase, GcgConfig, GcgPhase
from .objective import ObjectiveConfig
from .phase import Candidate, SearchContext
from .soft import SoftConfig, SoftPromptPhase
from .task import CategoryTask
from .vocab import allowed_tokens

PERFECT = 1.0 - 1e-9
STATE_VERSION = 1


@dataclass
class SearchConfig:
    lengths: tuple[int, ...] = (4,)  # alias lengths in tokens, each searched; the best is kept
    budget: int = 3000  # exact evaluations per category and length
    holdout_fraction: float = 0.25
    seed: int = 0
    roundtrip_only: bool = False  # the alias must survive decode -> encode, to paste as text
    pairs_per_batch: int = 8  # (candidate, image) pairs per grounding call
    random_starts: int = 8  # random candidates scored before the first phase
    # Evolution (embedding-neighbour mutations) before GCG: on the planted tiny benchmark
    # (seed 0) GCG's linear top-k proposed far-off tokens and spent ~750 evaluations without a
    # gain, while evolution climbed; in this order the search reached 0.9 of the planted train
    # score after 704 evaluations instead of 2896.
    phases: tuple[str, ...] = ("soft", "evolution", "gcg")
    shares: tuple[float, ...] = (0.3, 0.45, 0.25)  # of the budget, per phase
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    soft: SoftConfig = field(default_factory=SoftConfig)
    gcg: GcgConfig = field(default_factory=GcgConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)


@dataclass
class Progress:
    category: str
    length: int
    phase: str
    evaluations: int
    budget: int
    best: float


@dataclass
class Outcome:
    best: Candidate
    evaluations: int
    curve: list[tuple[int, float]]  # (evaluations spent, best train score so far)


def _fit(tokens: list[int], length: int, allowed: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """The natural label's ids cut or filled (with random allowed ids) to the alias length."""
    kept = [t for t in tokens if allowed[t]][:length]
    fill = rng.choice(np.flatnonzero(allowed), length - len(kept)).tolist()
    return tuple(int(t) for t in kept + fill)


def _phase(name: str, ctx: SearchContext, cfg: SearchConfig, starts: list[Candidate]):
    best = max(starts, key=lambda c: c.score)
    if name == "soft":
        return SoftPromptPhase(ctx, cfg.soft, best)
    if name == "gcg":
        return GcgPhase(ctx, cfg.gcg, best)
    if name == "evolution":
        return EvolutionPhase(ctx, cfg.evolution, starts)
    raise ValueError(f"unknown search phase {name!r} (soft, gcg, evolution)")


def _top(seen: dict[tuple[int, ...], float], count: int, keep: Callable[[tuple[int, ...]], bool]) -> list[Candidate]:
    ranked = sorted(((s, t) for t, s in seen.items() if keep(t)), key=lambda p: (-p[0], p[1]))
    return [Candidate(t, s) for s, t in ranked[:count]]


def search_category(task: CategoryTask, model: Sam3, tokenizer: Tokenizer, cfg: SearchConfig, length: int,
                    state_path: Path | None = None,
                    report: Callable[[Progress], None] = lambda p: None) -> Outcome:
    """Run (or resume, if ``state_path`` holds a checkpoint) the search of one category for
    aliases of ``length`` tokens. A finished search's checkpoint gives back its outcome."""
    allowed = allowed_tokens(tokenizer, cfg.roundtrip_only)
    # each candidate's round trip is checked once, not at every ranking
    keep = functools.lru_cache(maxsize=None)(tokenizer.roundtrips) if cfg.roundtrip_only else (lambda t: True)
    ctx = SearchContext(model, task.train, tokenizer, allowed, length,
                        np.random.default_rng([cfg.seed, task.category.id]))
    label = task.category.label
    saved = pickle.loads(state_path.read_bytes()) if state_path and state_path.is_file() else None
    if saved is not None and saved["version"] == STATE_VERSION:
        ctx.seen = saved["seen"]
        task.train.evaluations = saved["evaluations"]
        curve, index, starts = saved["curve"], saved["index"], saved["starts"]
    else:
        saved = None
        task.train.evaluations = 0  # the budget counts this length's evaluations only
        natural = tokenizer.encode(task.category.name) if task.category.name else []
        first = [_fit(natural, length, allowed, ctx.rng)] if natural else []
        first += [tuple(int(t) for t in ctx.rng.choice(np.flatnonzero(allowed), length))
                  for _ in range(cfg.random_starts)]
        starts = ctx.evaluate(first)
        curve, index = [(task.train.evaluations, max(c.score for c in starts))], 0

    def best_so_far() -> Candidate:
        return (_top(ctx.seen, 1, keep) or _top(ctx.seen, 1, lambda t: True))[0]

    best = best_so_far()
    while index < len(cfg.phases) and best.score < PERFECT:
        name = cfg.phases[index]
        limit = int(cfg.budget * sum(cfg.shares[: index + 1]))
        if saved is not None:
            ctx.rng.bit_generator.state = saved["rng_before_phase"]
        rng_before = ctx.rng.bit_generator.state
        ctx.limit = limit
        phase = _phase(name, ctx, cfg, starts)
        if saved is not None:
            phase.restore(saved["phase"])
            saved = None
        while not phase.done and task.train.evaluations < limit and best.score < PERFECT:
            phase.step()
            best = best_so_far()
            curve.append((task.train.evaluations, best.score))
            report(Progress(label, length, name, task.train.evaluations, cfg.budget, best.score))
            if state_path is not None:
                state = {"version": STATE_VERSION, "seen": ctx.seen, "evaluations": task.train.evaluations,
                         "curve": curve, "index": index, "starts": starts, "rng_before_phase": rng_before,
                         "phase": phase.state()}
                atomic_write_bytes(state_path, pickle.dumps(state))
        index += 1
        starts = _top(ctx.seen, max(cfg.evolution.population, 1), keep) or starts
    return Outcome(best, task.train.evaluations, curve)
