"""The search of one category: start candidates, then the phases in turn (by default soft
prompt with projection, evolution, GCG swaps; optionally the vocabulary sweep or the visual
concept first), each spending its share of the evaluation budget (the sweep what it costs),
with the whole state checkpointed after every step so that a killed run resumes exactly. Unless
the objective gives them, the surrogate's temperatures are first scaled to the model's outputs
on random aliases (``Scorer.calibrated``).

Budget: exact evaluations, one candidate scored on one training image. A phase gets its share
plus whatever earlier phases left unspent. When every phase has stopped on its own with budget
left, another round of the phases begins from fresh random starts; the search stops when the
budget is spent, when ``round_patience`` rounds in a row find nothing better, or when a
candidate reaches the objective's maximum (1).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from mlx_alias.model.sam3 import Sam3
from mlx_alias.tokenizer import Tokenizer

from .concept import ConceptPhase
from .discrete import EvolutionConfig, EvolutionPhase, GcgConfig, GcgPhase
from .objective import ObjectiveConfig
from .phase import Candidate, SearchContext, ids_of
from .soft import SoftConfig, SoftPromptPhase
from .state import StateError, load_state, save_state
from .sweep import SweepConfig, SweepPhase, scorer_sweep_cost
from .task import CategoryTask
from .vocab import allowed_tokens

PERFECT = 1.0 - 1e-9
T = TypeVar("T")
CALIBRATION_PROMPTS = 8  # random aliases grounded to scale the surrogate's temperatures
CALIBRATION_STREAM = 1  # keeps their generator apart from the search's own ([seed, category])
# The phases that climb the surrogate: only they need its temperatures scaled (an evolution-only
# search, the seed-style baseline among them, never grounds the calibration prompts).
SURROGATE_PHASES = frozenset({"soft", "gcg"})


# Each phase's share of the budget (``SearchConfig.with_phases`` rescales them to the phases
# chosen); the concept phase's is small, as it spends exact evaluations on a few projections only.
# The sweep's is none: it spends what the vocabulary costs (``sweep_cost``), in the first round
# only, and the phases after it share what it leaves.
PHASE_SHARES = {"sweep": 0.0, "concept": 0.05, "soft": 0.3, "evolution": 0.45, "gcg": 0.25}
FIRST_ROUND_ONLY = frozenset({"sweep"})
DEFAULT_PHASES = ("soft", "evolution", "gcg")


@dataclass
class SearchConfig:
    lengths: tuple[int, ...] = (4,)  # alias lengths in tokens, each searched; the best is kept
    # Exact evaluations per category and length: at half of it searches were still climbing
    # (docs/method.md, "Budget").
    budget: int = 6000
    holdout_fraction: float = 0.25
    seed: int = 0
    roundtrip_only: bool = False  # the alias must survive decode -> encode, to paste as text
    pairs_per_batch: int = 8  # (candidate, image) pairs per grounding call
    random_starts: int = 8  # random candidates scored before the first phase
    # Evolution before GCG: GCG's linear estimate first proposes far-off tokens, evolution climbs
    # from the starts (docs/method.md, "Phases"). The visual-concept phase is not a default: its
    # direction means something only where the image and text towers are aligned.
    phases: tuple[str, ...] = DEFAULT_PHASES
    shares: tuple[float, ...] = tuple(PHASE_SHARES[name] for name in DEFAULT_PHASES)
    # Phases stop on their own patience, often in a local optimum with budget left: then a new
    # round runs the phases again from fresh random starts, until the budget is spent or this
    # many rounds in a row end without a better alias.
    round_patience: int = 2
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # 8 soft prompts side by side, where one soft phase alone climbs one (``SoftConfig``): one
    # ascent ends in its start's local optimum (docs/method.md, "Phases").
    soft: SoftConfig = field(default_factory=lambda: SoftConfig(starts=8))
    gcg: GcgConfig = field(default_factory=GcgConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    # Alignment needs no images, so its optimum comes within a few tens of steps.
    concept: SoftConfig = field(default_factory=lambda: SoftConfig(init="random", steps=60, patience=3))
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def with_phases(self, names: tuple[str, ...]) -> SearchConfig:
        """These phases in this order, the budget shared in proportion to ``PHASE_SHARES``."""
        unknown = [n for n in names if n not in PHASE_SHARES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"phases must be distinct names among {', '.join(PHASE_SHARES)}, got {','.join(names)!r}")
        total = sum(PHASE_SHARES[n] for n in names) or 1.0
        return dataclasses.replace(self, phases=tuple(names), shares=tuple(PHASE_SHARES[n] / total for n in names))


@dataclass
class SearchStep:
    """Where a search stands after a step (sent to the ``on_step`` callback)."""

    category: str  # its label
    length: int
    phase: str
    evaluations: int
    budget: int
    best: float  # best training score so far
    number: int = 1  # the category's place in the run, of ``count``
    count: int = 1


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
    spent: int  # evaluations when the round began (or its sweep ended): what its phases share out
    seen: int  # candidates seen when the round began (``ctx.seen`` keeps insertion order)
    best: float  # best score when the round began
    stale: int = 0  # rounds in a row that ended without a better best


def _random_starts(ctx: SearchContext, cfg: SearchConfig, first: list[tuple[int, ...]]) -> list[Candidate]:
    """``first`` and ``cfg.random_starts`` random allowed aliases, as many of them as the budget
    left pays for (at least one), scored exactly."""
    pool = np.flatnonzero(ctx.allowed)
    affordable = max(1, (cfg.budget - ctx.scorer.evaluations) // ctx.scorer.images - len(first))
    first = first + [
        tuple(int(t) for t in ctx.rng.choice(pool, ctx.length)) for _ in range(min(cfg.random_starts, affordable))
    ]
    return ctx.evaluate(first)


def _calibration_prompts(
    cfg: SearchConfig, task: CategoryTask, allowed: np.ndarray, length: int
) -> list[tuple[int, ...]]:
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
    if name == "sweep":
        return SweepPhase(ctx, cfg.sweep, starts)
    raise ValueError(f"unknown search phase {name!r} ({', '.join(PHASE_SHARES)})")


def _top(seen: dict[tuple[int, ...], float], count: int, keep: Callable[[tuple[int, ...]], bool]) -> list[Candidate]:
    ranked = sorted(((s, t) for t, s in seen.items() if keep(t)), key=lambda p: (-p[0], p[1]))
    return [Candidate(t, s) for s, t in ranked[:count]]


def _candidates(pairs: list) -> list[Candidate]:
    return [Candidate(tuple(int(t) for t in tokens), float(score)) for tokens, score in pairs]


def _checkpoint(
    ctx: SearchContext,
    curve: list[tuple[int, float]],
    starts: list[Candidate] | None,
    at: RoundMark,
    rng_before_phase: dict,
    phase_state: dict,
) -> dict:
    """The whole search state as JSON values and arrays (``state.save_state``)."""
    return {
        "seen": [[list(t), s] for t, s in ctx.seen.items()],
        "bounds": [[list(t), b] for t, b in ctx.bounds.items()],
        "evaluations": ctx.scorer.evaluations,
        "curve": [list(point) for point in curve],
        "starts": None if starts is None else [[list(c.tokens), c.score] for c in starts],
        "at": dataclasses.asdict(at),
        "rng_before_phase": rng_before_phase,
        "phase": phase_state,
    }


def _resumed(saved: dict, ctx: SearchContext) -> tuple[list[tuple[int, float]], list[Candidate] | None, RoundMark]:
    """Put a checkpoint's search state back into ``ctx``; returns (curve, starts, round mark)."""
    ctx.seen = {c.tokens: c.score for c in _candidates(saved["seen"])}  # in the order they were seen
    ctx.bounds = {c.tokens: c.score for c in _candidates(saved["bounds"])}
    ctx.scorer.evaluations = int(saved["evaluations"])
    curve = [(int(e), float(s)) for e, s in saved["curve"]]
    starts = None if saved["starts"] is None else _candidates(saved["starts"])
    return curve, starts, RoundMark(**saved["at"])


class CategorySearch:
    """The search of one category for aliases of one length, as a loop of labelled steps over
    one state (the context's candidates, the curve, the round mark, the running phase), which
    is checkpointed whole after every phase step."""

    def __init__(
        self,
        task: CategoryTask,
        model: Sam3,
        tokenizer: Tokenizer,
        cfg: SearchConfig,
        length: int,
        state_path: Path | None = None,
        on_step: Callable[[SearchStep], None] = lambda step: None,
    ):
        self.task, self.cfg, self.length, self.state_path, self.on_step = task, cfg, length, state_path, on_step
        allowed = allowed_tokens(tokenizer, cfg.roundtrip_only)
        # each candidate's round trip is checked once, not at every ranking
        self.keep = functools.lru_cache(maxsize=None)(tokenizer.roundtrips) if cfg.roundtrip_only else (lambda t: True)
        self.ctx = SearchContext(
            model, task.train, tokenizer, allowed, length, np.random.default_rng([cfg.seed, task.category.id])
        )
        if "sweep" in cfg.phases:
            cost = scorer_sweep_cost(allowed, task.train, cfg.sweep, length)
            if cfg.budget <= cost:
                raise ValueError(
                    f"the sweep of {int(allowed.sum())} tokens costs up to {cost} evaluations a length, "
                    f"more than the budget of {cfg.budget}: give a budget above it (the other phases "
                    "share what the sweep leaves) or leave the sweep out"
                )
        if SURROGATE_PHASES.intersection(cfg.phases):
            self.ctx.objective = task.train.calibrated(
                ids_of(tokenizer, _calibration_prompts(cfg, task, allowed, length))
            )
        self.saved: dict | None = None  # a checkpoint not yet put back (its phase's state)
        self.curve: list[tuple[int, float]] = []
        self.starts: list[Candidate] | None = None
        self.at = RoundMark(0, 0, 0, 0, -np.inf)

    def _damaged(self, exc: Exception) -> StateError:
        reason = (
            str(exc)
            if isinstance(exc, StateError)
            else f"the checkpoint {self.state_path} cannot be read: it does not hold this search's state"
        )
        return StateError(
            f"{reason}; delete it to restart the {self.length}-token search of "
            f"{self.task.category.label} from its beginning"
        )

    def best(self) -> Candidate:
        return (_top(self.ctx.seen, 1, self.keep) or _top(self.ctx.seen, 1, lambda t: True))[0]

    def start_or_resume(self) -> None:
        """Step 0: the checkpoint's state, or the first starts (random, and the natural label)."""
        if self.state_path is not None and self.state_path.is_file():
            try:
                self.saved = load_state(self.state_path)
                self.curve, self.starts, self.at = _resumed(self.saved, self.ctx)
            except (StateError, KeyError, TypeError, ValueError) as exc:
                raise self._damaged(exc) from exc
            return
        tokenizer, task = self.ctx.tokenizer, self.task
        task.train.evaluations = 0  # the budget counts this length's evaluations only
        natural = tokenizer.encode(task.category.name) if task.category.name else []
        allowed = self.ctx.allowed
        self.starts = _random_starts(
            self.ctx, self.cfg, [_fit(natural, self.length, allowed, self.ctx.rng)] if natural else []
        )
        self.curve = [(task.train.evaluations, max(c.score for c in self.starts))]

    def open_phase(self, name: str) -> tuple[object, dict]:
        """The round's next phase, from its starts (or put back as the checkpoint holds it), and
        the generator state it began from (saved with it, so that a resume rebuilds it alike)."""
        if self.saved is None:
            rng_before = self.ctx.rng.bit_generator.state
            return _phase(name, self.ctx, self.cfg, self.starts), rng_before
        try:
            self.ctx.rng.bit_generator.state = self.saved["rng_before_phase"]
            rng_before = self.ctx.rng.bit_generator.state
            phase = _phase(name, self.ctx, self.cfg, self.starts)
            phase.restore(self.saved["phase"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(exc) from exc
        self.saved = None
        return phase, rng_before

    def run_phase(self, name: str, best: Candidate) -> Generator[SearchStep, None, Candidate]:
        """Step the round's current phase until it stops, its share of the budget is spent, or an
        alias scores perfectly; checkpoint after every step, and yield the step once its
        checkpoint is written. Returns the best candidate."""
        cfg, at, task = self.cfg, self.at, self.task
        # each round shares out what is left of the budget as the first round did (the sweep
        # stops on its own once the vocabulary is screened)
        limit = (
            cfg.budget if name == "sweep" else at.spent + int((cfg.budget - at.spent) * sum(cfg.shares[: at.phase + 1]))
        )
        self.ctx.limit = limit
        phase, rng_before = self.open_phase(name)
        while not phase.done and task.train.evaluations < limit and best.score < PERFECT:
            phase.step()
            best = self.best()
            if self.curve[-1] != (task.train.evaluations, best.score):  # gradient steps spend nothing
                self.curve.append((task.train.evaluations, best.score))
            step = SearchStep(task.category.label, self.length, name, task.train.evaluations, cfg.budget, best.score)
            self.on_step(step)
            if self.state_path is not None:
                save_state(
                    self.state_path, _checkpoint(self.ctx, self.curve, self.starts, at, rng_before, phase.state())
                )
            yield step
        return best

    def next_phase(self, swept: bool = False) -> None:
        """The next phase starts from this round's best, not from earlier rounds' basins. After
        a sweep (``swept``), the phases left share the budget it left."""
        spent = self.task.train.evaluations if swept else self.at.spent
        self.at = dataclasses.replace(self.at, phase=self.at.phase + 1, spent=spent)
        this_round = {t: self.ctx.seen[t] for t in list(self.ctx.seen)[self.at.seen :]}
        self.starts = _top(this_round, max(self.cfg.evolution.population, 1), self.keep) or self.starts

    def close_round(self, best: Candidate) -> None:
        improved = best.score > self.at.best
        self.at = RoundMark(
            self.at.round + 1,
            0,
            self.task.train.evaluations,
            len(self.ctx.seen),
            best.score,
            0 if improved else self.at.stale + 1,
        )
        self.starts = None

    def steps(self) -> Generator[SearchStep, None, Outcome]:
        """The search, one step at a time: yields each step once its checkpoint is written (so
        that a caller may ship the checkpoint elsewhere) and returns the outcome."""
        cfg, train = self.cfg, self.task.train
        self.start_or_resume()
        best = self.best()
        while best.score < PERFECT and train.evaluations < cfg.budget and self.at.stale < cfg.round_patience:
            if self.starts is None:  # 1. a new round: fresh random starts, away from the last round's basin
                self.starts = _random_starts(self.ctx, cfg, [])
            while self.at.phase < len(cfg.phases) and best.score < PERFECT:  # 2. its phases in turn
                name = cfg.phases[self.at.phase]
                runs = self.at.round == 0 or name not in FIRST_ROUND_ONLY
                if runs:
                    best = yield from self.run_phase(name, best)
                self.next_phase(swept=runs and name == "sweep")
            self.close_round(best)  # 3. the round's end: did it find a better alias?
        return Outcome(best, train.evaluations, self.curve, self.at.round, self.ctx.objective)

    def run(self) -> Outcome:
        return drain(self.steps())


def drain(steps: Generator[object, None, T]) -> T:
    """Run a step generator to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def search_category(
    task: CategoryTask,
    model: Sam3,
    tokenizer: Tokenizer,
    cfg: SearchConfig,
    length: int,
    state_path: Path | None = None,
    on_step: Callable[[SearchStep], None] = lambda step: None,
) -> Outcome:
    """Run (or resume, if ``state_path`` holds a checkpoint) the search of one category for
    aliases of ``length`` tokens. A finished search's checkpoint gives back its outcome. A
    checkpoint that cannot be read raises ``StateError`` naming it and how to go on."""
    return CategorySearch(task, model, tokenizer, cfg, length, state_path, on_step).run()
