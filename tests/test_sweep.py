"""The vocabulary sweep on the tiny model: every allowed token screened on the positive images,
at one evaluation each, the best screened raced on every image, then pairs of the best screened
raced against the best single; a budget that stops it early leaves the races their share; it
resumes bit-identically from ``state()``; in a search it runs in the first round only and the
phases after it share what it leaves."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from test_driver import _killed_then_resumed, _run

from mlx_alias.search import driver
from mlx_alias.search.discrete import EvolutionConfig
from mlx_alias.search.driver import SearchConfig, search_category
from mlx_alias.search.phase import ids_of
from mlx_alias.search.sweep import SweepConfig, SweepPhase, sweep_cost
from mlx_alias.tokenizer import load_tokenizer

SWEEP = SweepConfig(keep=6, pairs=3, chunk=64)
TOKENS = 200  # of the world's allowed vocabulary, so that a sweep takes seconds


def _context(world, seed: int = 1):
    context, starts = world
    ctx = context(seed)
    ctx.allowed = np.zeros_like(ctx.allowed)
    ctx.allowed[np.flatnonzero(context().allowed)[:TOKENS]] = True
    return ctx, starts


def _sweep(phase: SweepPhase) -> list:
    """Step to the end; the steps' results."""
    steps = []
    while not phase.done:
        steps.append(phase.step())
    return steps


def test_sweep_screens_every_allowed_token_once_then_races_the_best_screened_and_their_pairs(world):
    ctx, starts = _context(world)
    before = ctx.scorer.evaluations
    phase = SweepPhase(ctx, SWEEP, starts)
    steps = _sweep(phase)
    # four screen steps of 64, 64, 64, 8 tokens on the world's one positive image, then two races
    assert phase.images == [0] and [len(s) for s in steps[:-2]] == [0] * 4 and len(steps) == 6
    assert sorted(phase.order) == list(np.flatnonzero(ctx.allowed)) and phase.position == TOKENS
    raced = ctx.scorer.evaluations - before - TOKENS
    assert 0 < raced <= (SWEEP.keep + 3 * 2) * ctx.scorer.images
    # the screen is each token's alias (the token repeated) scored on that image alone
    some = sorted(phase.order[:12])
    quality = ctx.scorer.screen(ids_of(ctx.tokenizer, [phase.alias(t) for t in some]), [0])
    assert {t: q for t, q in zip(some, quality) if q > 0} == {t: phase.kept[t] for t in some if t in phase.kept}
    assert all(phase.alias(t) == (t,) * 4 for t in some)
    # the singles' race: the best screened, scored exactly where they may beat the starts (on two
    # images the race scores every image in its first round, so nothing is pruned here)
    ranked = sorted(phase.kept, key=lambda t: -phase.kept[t])
    singles, pairs = steps[-2], steps[-1]
    assert [c.tokens for c in singles] == [phase.alias(t) for t in ranked[: SWEEP.keep]]
    # the pairs' race: ordered pairs of the 3 best screened, each filling half the alias
    tops = ranked[:3]
    assert {c.tokens for c in pairs} == {(a, a, b, b) for a in tops for b in tops if a != b}
    assert phase.raced == singles + pairs and phase.best == max(phase.raced, key=lambda c: c.score)
    exact = ctx.scorer.exact(ids_of(ctx.tokenizer, [c.tokens for c in phase.raced]))
    assert [c.score for c in phase.raced] == [e.score for e in exact]


def test_a_pair_fills_the_first_half_rounded_up_and_one_token_aliases_have_no_pairs(world):
    ctx, starts = _context(world)
    pairs = {}
    for length in (2, 3, 4):
        ctx.length = length
        pairs[length] = SweepPhase(ctx, SWEEP, starts).pair(7, 9)
    assert pairs == {2: (7, 9), 3: (7, 7, 9), 4: (7, 7, 9, 9)}
    ctx.length = 1
    before = ctx.scorer.evaluations
    steps = _sweep(SweepPhase(ctx, SWEEP, starts))
    assert len(steps) == 5 and all(len(c.tokens) == 1 for c in steps[-1])  # four screen steps, one race
    assert ctx.scorer.evaluations - before <= sweep_cost(ctx.allowed, 1, 2, SWEEP, 1) == TOKENS + SWEEP.keep * 2


def test_a_budget_cut_sweep_screens_a_sample_and_keeps_the_race_its_share(world):
    ctx, starts = _context(world)
    ctx.limit = ctx.scorer.evaluations + 90 + (SWEEP.keep + 3 * 2) * ctx.scorer.images
    phase = SweepPhase(ctx, SWEEP, starts)
    _sweep(phase)
    assert phase.position == 90 and ctx.scorer.evaluations <= ctx.limit


def test_sweep_state_round_trip_is_bit_identical(world):
    ctx, starts = _context(world)
    whole = SweepPhase(ctx, SWEEP, starts)
    _sweep(whole)
    half = SweepPhase(_context(world)[0], SWEEP, starts)
    half.step(), half.step()
    resumed = SweepPhase(_context(world)[0], SWEEP, starts)  # the same ctx.rng: the same images and order
    resumed.restore(json.loads(json.dumps(half.state())))
    _sweep(resumed)
    assert resumed.state() == whole.state() and resumed.best == whole.best


@pytest.fixture
def small_vocabulary(monkeypatch):
    """Searches allow the first 150 content ids only, so that a sweep takes seconds."""
    real = driver.allowed_tokens

    def allowed_tokens(tokenizer, roundtrip_only=False):
        allowed = real(tokenizer, roundtrip_only)
        allowed[np.flatnonzero(allowed)[150:]] = False
        return allowed

    monkeypatch.setattr(driver, "allowed_tokens", allowed_tokens)


CONFIG = SearchConfig(
    budget=700,
    random_starts=3,
    round_patience=10**6,
    sweep=SweepConfig(keep=4, pairs=2, chunk=64),
    evolution=EvolutionConfig(generations=3, patience=2, population=4),
).with_phases(("sweep", "evolution"))


def test_sweep_runs_in_the_first_round_only_and_the_rest_share_what_it_leaves(task, search_model, small_vocabulary):
    phases = []
    outcome = search_category(task, search_model, load_tokenizer(), CONFIG, 2, None, lambda s: phases.append(s))
    swept = [s for s in phases if s.phase == "sweep"]
    # three screen steps (64, 64, 22 tokens on one of the two positive images) and the two races, first
    assert len(swept) == 5 and phases[:5] == swept and swept[2].evaluations == 2 * 3 + 150
    assert outcome.rounds >= 2 and outcome.evaluations >= CONFIG.budget  # the rounds after it spent the rest
    assert sweep_cost(np.ones(150, bool), 2, 2, CONFIG.sweep, 2) == 150 + (4 + 2) * 2
    assert sweep_cost(np.ones(150, bool), 2, 2, SweepConfig(images=2), 2) == 150 * 2 + (64 + 56) * 2


def test_a_kill_inside_the_sweep_resumes_to_the_same_end(task, search_model, small_vocabulary, tmp_path, monkeypatch):
    whole = _run(task, search_model, tmp_path / "whole.safetensors", CONFIG)
    resumed = _killed_then_resumed(
        task,
        search_model,
        tmp_path / "cut.safetensors",
        monkeypatch,
        CONFIG,
        lambda state: state["at"]["phase"] == 0 and state["phase"].get("position") == 128,
    )
    assert (resumed.best, resumed.evaluations, resumed.curve) == (whole.best, whole.evaluations, whole.curve)


def test_a_budget_the_sweep_would_spend_is_refused(task, search_model, small_vocabulary):
    with pytest.raises(ValueError, match="the sweep of 150 tokens costs up to 162 evaluations a length, more than"):
        search_category(task, search_model, load_tokenizer(), replace(CONFIG, budget=162), 2)
