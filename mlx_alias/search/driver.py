"""The search of one category: start candidates, then the phases in turn (by default soft
prompt with projection, evolution, GCG swaps; optionally the visual concept first), each
spending its share of the evaluation budget, with the whole state checkpointed after every
step so that a killed run resumes exactly. Unless the objective gives them, the surrogate's
temperatures are first scaled to the model's outputs on random aliases (``Scorer.calibrated``).

Budget: exact evaluations, one candidate scored on one training image. A phase gets its share
plus whatever earlier phases left unspent. When every phase has stopped on its own with budget
left, another round of the phases begins from fresh random starts; the search stops when the
budget is spent, when ``round_patience`` rounds in a row find nothing better, or when a
candidate reaches the objective's maximum (1).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import Tokenizer

from .concept import ConceptPhase
from .discrete import EvolutionConfig, EvolutionPhase, GcgConfig, GcgPhase
from .objective import ObjectiveConfig
from .phase import Candidate, SearchContext, ids_of
from .soft import SoftConfig, SoftPromptPhase
from .state import StateError, load_state, save_state
from .task import CategoryTask
from .vocab import allowed_tokens

PERFECT = 1.0 - 1e-9
CALIBRATION_PROMPTS = 8  # random aliases grounded to scale the surrogate's temperatures
CALIBRATION_STREAM = 1  # keeps their generator apart from the search's own ([seed, category])
# The phases that climb the surrogate: only they need its temperatures scaled (an evolution-only
# search, the seed-style baseline among them, never grounds the calibration prompts).
SURROGATE_PHASES = frozenset({"soft", "gcg"})


# Each phase's share of the budget (``SearchConfig.with_phases`` rescales them to the phases
# chosen); the concept phase's is small, as it spends exact evaluations on a few projections only.
PHASE_SHARES = {"concept": 0.05, "soft": 0.3, "evolution": 0.45, "gcg": 0.25}
DEFAULT_PHASES = ("soft", "evolution", "gcg")


@dataclass
class SearchConfig:
    lengths: tuple[int, ...] = (4,)  # alias lengths in tokens, each searched; the best is kept
    # Exact evaluations per category and length. On the planted tiny benchmark 6000 gave a
    # median holdout of 0.972 of the hidden prompt's over 24 searches (0.944 over 40) against
    # 0.931 (0.907) with 3000, and 0.873 against 0.787 on 48 unseen images per world: searches
    # still climbing on training; twice the seconds (benchmarks/README.md).
    budget: int = 6000
    holdout_fraction: float = 0.25
    seed: int = 0
    roundtrip_only: bool = False  # the alias must survive decode -> encode, to paste as text
    pairs_per_batch: int = 8  # (candidate, image) pairs per grounding call
    random_starts: int = 8  # random candidates scored before the first phase
    # Evolution (embedding-neighbour mutations) before GCG: on the planted tiny benchmark
    # (seed 0) GCG's linear top-k proposed far-off tokens and spent ~750 evaluations without a
    # gain, while evolution climbed; in this order the search reached 0.9 of the planted train
    # score after 704 evaluations instead of 2896.
    # The visual-concept phase is not among the defaults: on random tiny models the image and
    # text towers are not aligned (planted prompt's cosine to the concept centre 0.005, random
    # prompts' median -0.015), so there it only spends budget; see ``concept.py``.
    phases: tuple[str, ...] = DEFAULT_PHASES
    shares: tuple[float, ...] = tuple(PHASE_SHARES[name] for name in DEFAULT_PHASES)
    # Phases stop on their own patience, often in a local optimum with budget left: then a new
    # round runs the phases again from fresh random starts, until the budget is spent or this
    # many rounds in a row end without a better alias.
    round_patience: int = 2
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # 8 soft prompts side by side, where one soft phase alone climbs one (``SoftConfig``): over
    # the 24 planted tiny searches, median holdout 0.965 of the hidden prompt's against 0.908
    # with one, for about 3.4x the seconds (benchmarks/README.md).
    soft: SoftConfig = field(default_factory=lambda: SoftConfig(starts=8))
    gcg: GcgConfig = field(default_factory=GcgConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    # Alignment needs no images, so its optimum comes quickly: on the tiny planted world (seed 0)
    # the cosine reached 0.80 within these 60 steps, for 6 projections scored.
    concept: SoftConfig = field(default_factory=lambda: SoftConfig(init="random", steps=60, patience=3))

    def with_phases(self, names: tuple[str, ...]) -> SearchConfig:
        """These phases in this order, the budget shared in proportion to ``PHASE_SHARES``."""
        unknown = [n for n in names if n not in PHASE_SHARES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"phases must be distinct names among {', '.join(PHASE_SHARES)}, got {','.join(names)!r}")
        total = sum(PHASE_SHARES[n] for n in names)
        return dataclasses.replace(self, phases=tuple(names), shares=tuple(PHASE_SHARES[n] / total for n in names))



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
    rounds: int  # rounds of the phases begun
    surrogate: ObjectiveConfig | None  # the gradient phases' objective, temperatures set; None without them


def _fit(tokens: list[int], length: int, allowed: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """The natural label's ids cut or filled (with random allowed ids) to the alias length."""
    kept = [t for t in tokens if allowed[t]][:length]
    fill = rng.choice(np.flatnonzero(allowed), length - len(kept)).tolist()
    return tuple(int(t) for t in kept + fill)


@dataclass(frozen=True)
class RoundMark:
    """Where the search stands: the round, the phase within it, and what the round began with."""

    round: int
    phase: int  # index into SearchConfig.phases
    spent: int  # evaluations when the round began
    seen: int  # candidates seen when the round began (``ctx.seen`` keeps insertion order)
    best: float  # best score when the round began
    stale: int = 0  # rounds in a row that ended without a better best


def _random_starts(ctx: SearchContext, cfg: SearchConfig, first: list[tuple[int, ...]]) -> list[Candidate]:
    """``first`` and ``cfg.random_starts`` random allowed aliases, as many of them as the budget
    left pays for (at least one), scored exactly."""
    pool = np.flatnonzero(ctx.allowed)
    affordable = max(1, (cfg.budget - ctx.scorer.evaluations) // ctx.scorer.images - len(first))
    first = first + [tuple(int(t) for t in ctx.rng.choice(pool, ctx.length))
                     for _ in range(min(cfg.random_starts, affordable))]
    return ctx.evaluate(first)


def _calibration_prompts(cfg: SearchConfig, task: CategoryTask, allowed: np.ndarray, length: int) -> list[tuple[int, ...]]:
    """Random aliases on which the surrogate's temperatures are scaled, from a generator of
    their own, so that a resumed search draws them, and scales, exactly as before."""
    draw = np.random.default_rng([cfg.seed, task.category.id, length, CALIBRATION_STREAM])
    return [tuple(int(t) for t in draw.choice(np.flatnonzero(allowed), length)) for _ in range(CALIBRATION_PROMPTS)]


def _phase(name: str, ctx: SearchContext, cfg: SearchConfig, starts: list[Candidate]):
    best = max(starts, key=lambda c: c.score)
    if name == "soft":
        return SoftPromptPhase(ctx, cfg.soft, starts)
    if name == "gcg":
        return GcgPhase(ctx, cfg.gcg, best)
    if name == "evolution":
        return EvolutionPhase(ctx, cfg.evolution, starts)
    if name == "concept":
        return ConceptPhase(ctx, cfg.concept, starts)
    raise ValueError(f"unknown search phase {name!r} ({', '.join(PHASE_SHARES)})")


def _top(seen: dict[tuple[int, ...], float], count: int, keep: Callable[[tuple[int, ...]], bool]) -> list[Candidate]:
    ranked = sorted(((s, t) for t, s in seen.items() if keep(t)), key=lambda p: (-p[0], p[1]))
    return [Candidate(t, s) for s, t in ranked[:count]]


def _candidates(pairs: list) -> list[Candidate]:
    return [Candidate(tuple(int(t) for t in tokens), float(score)) for tokens, score in pairs]


def _checkpoint(ctx: SearchContext, curve: list[tuple[int, float]], starts: list[Candidate] | None, at: RoundMark,
                rng_before_phase: dict, phase_state: dict) -> dict:
    """The whole search state as JSON values and arrays (``state.save_state``)."""
    return {"seen": [[list(t), s] for t, s in ctx.seen.items()], "bounds": [[list(t), b] for t, b in ctx.bounds.items()],
            "evaluations": ctx.scorer.evaluations, "curve": [list(point) for point in curve],
            "starts": None if starts is None else [[list(c.tokens), c.score] for c in starts],
            "at": dataclasses.asdict(at), "rng_before_phase": rng_before_phase, "phase": phase_state}


def _resumed(saved: dict, ctx: SearchContext) -> tuple[list[tuple[int, float]], list[Candidate] | None, RoundMark]:
    """Put a checkpoint's search state back into ``ctx``; returns (curve, starts, round mark)."""
    ctx.seen = {c.tokens: c.score for c in _candidates(saved["seen"])}  # in the order they were seen
    ctx.bounds = {c.tokens: c.score for c in _candidates(saved["bounds"])}
    ctx.scorer.evaluations = int(saved["evaluations"])
    curve = [(int(e), float(s)) for e, s in saved["curve"]]
    starts = None if saved["starts"] is None else _candidates(saved["starts"])
    return curve, starts, RoundMark(**saved["at"])


def search_category(task: CategoryTask, model: Sam3, tokenizer: Tokenizer, cfg: SearchConfig, length: int,
                    state_path: Path | None = None,
                    report: Callable[[Progress], None] = lambda p: None) -> Outcome:
    """Run (or resume, if ``state_path`` holds a checkpoint) the search of one category for
    aliases of ``length`` tokens. A finished search's checkpoint gives back its outcome. A
    checkpoint that cannot be read raises ``StateError`` naming it and how to go on."""
    allowed = allowed_tokens(tokenizer, cfg.roundtrip_only)
    # each candidate's round trip is checked once, not at every ranking
    keep = functools.lru_cache(maxsize=None)(tokenizer.roundtrips) if cfg.roundtrip_only else (lambda t: True)
    ctx = SearchContext(model, task.train, tokenizer, allowed, length,
                        np.random.default_rng([cfg.seed, task.category.id]))
    if SURROGATE_PHASES.intersection(cfg.phases):
        ctx.objective = task.train.calibrated(ids_of(tokenizer, _calibration_prompts(cfg, task, allowed, length)))
    label = task.category.label
    remedy = f"delete it to restart the {length}-token search of {label} from its beginning"

    def damaged(exc: Exception) -> StateError:
        reason = str(exc) if isinstance(exc, StateError) else f"the checkpoint {state_path} cannot be read: it does not hold this search's state"
        return StateError(f"{reason}; {remedy}")

    saved = None
    if state_path is not None and state_path.is_file():
        try:
            saved = load_state(state_path)
            curve, starts, at = _resumed(saved, ctx)
        except (StateError, KeyError, TypeError, ValueError) as exc:
            raise damaged(exc) from exc
    else:
        task.train.evaluations = 0  # the budget counts this length's evaluations only
        natural = tokenizer.encode(task.category.name) if task.category.name else []
        starts = _random_starts(ctx, cfg, [_fit(natural, length, allowed, ctx.rng)] if natural else [])
        at = RoundMark(0, 0, 0, 0, -np.inf)
        curve = [(task.train.evaluations, max(c.score for c in starts))]

    def best_so_far() -> Candidate:
        return (_top(ctx.seen, 1, keep) or _top(ctx.seen, 1, lambda t: True))[0]

    best = best_so_far()
    while best.score < PERFECT and task.train.evaluations < cfg.budget and at.stale < cfg.round_patience:
        if starts is None:  # a new round: fresh random starts, away from the basin of the last
            starts = _random_starts(ctx, cfg, [])
        while at.phase < len(cfg.phases) and best.score < PERFECT:
            name = cfg.phases[at.phase]
            # each round shares out what is left of the budget as the first round did
            limit = at.spent + int((cfg.budget - at.spent) * sum(cfg.shares[: at.phase + 1]))
            ctx.limit = limit
            if saved is not None:
                try:
                    ctx.rng.bit_generator.state = saved["rng_before_phase"]
                    rng_before = ctx.rng.bit_generator.state
                    phase = _phase(name, ctx, cfg, starts)
                    phase.restore(saved["phase"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise damaged(exc) from exc
                saved = None
            else:
                rng_before = ctx.rng.bit_generator.state
                phase = _phase(name, ctx, cfg, starts)
            while not phase.done and task.train.evaluations < limit and best.score < PERFECT:
                phase.step()
                best = best_so_far()
                if curve[-1] != (task.train.evaluations, best.score):  # gradient steps spend nothing
                    curve.append((task.train.evaluations, best.score))
                report(Progress(label, length, name, task.train.evaluations, cfg.budget, best.score))
                if state_path is not None:
                    save_state(state_path, _checkpoint(ctx, curve, starts, at, rng_before, phase.state()))
            at = dataclasses.replace(at, phase=at.phase + 1)
            # the next phase starts from this round's best, not from earlier rounds' basins
            this_round = {t: ctx.seen[t] for t in list(ctx.seen)[at.seen:]}
            starts = _top(this_round, max(cfg.evolution.population, 1), keep) or starts
        improved = best.score > at.best
        at = RoundMark(at.round + 1, 0, task.train.evaluations, len(ctx.seen), best.score,
                       0 if improved else at.stale + 1)
        starts = None
    return Outcome(best, task.train.evaluations, curve, at.round, ctx.objective)
