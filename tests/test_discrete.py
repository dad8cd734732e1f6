"""The discrete phases on the tiny model: GCG samples swaps among the allowed top-k of the true
one-hot gradient and only ever improves; evolution keeps its elite, respects ``allowed`` and has
a one-candidate-at-a-time baseline; both resume bit-identically from ``state()``.

Every context shares one memo of exact scores (same model, images and objective, so the same
scores): a rerun costs gradients only, which keeps the file fast."""

from __future__ import annotations

import json
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.search.discrete import (
    EvolutionConfig,
    EvolutionPhase,
    GcgConfig,
    GcgPhase,
    Neighbours,
    token_gradients,
    top_tokens,
)
from mlx_alias.search.objective import MaskTarget, ObjectiveConfig
from mlx_alias.search.phase import SearchContext
from mlx_alias.search.scorer import Scorer

CFG = ObjectiveConfig(temperature=0.05, mask_temperature=1.0)  # the surrogate's, fixed (as the world's)
GCG = GcgConfig(steps=2, candidates=5, top_k=8, swaps_per_candidate=2)
EVOLUTION = EvolutionConfig(generations=2, population=5, elite=2, neighbours=8)


def _json(state: dict) -> dict:
    return json.loads(json.dumps(state))  # the driver may checkpoint as JSON


@pytest.fixture(scope="module")
def gcg_run(world):
    """Two GCG steps, with the alias and top-k each step started from."""
    context, starts = world
    phase = GcgPhase(context(), GCG, starts[0])
    steps = []
    while not phase.done:
        before, top = phase.current, phase.top()
        steps.append((before, top, phase.step(), phase.current))
    return phase, steps


def test_gcg_candidates_are_allowed_swaps_of_the_top_k(world, gcg_run):
    context, _ = world
    allowed = context().allowed
    _, steps = gcg_run
    assert len(steps) == GCG.steps
    for before, top, candidates, _ in steps:
        assert 0 < len(candidates) <= GCG.candidates and len(set(candidates)) == len(candidates)
        for c in candidates:
            assert allowed[list(c.tokens)].all()
            changed = [p for p, (x, y) in enumerate(zip(before.tokens, c.tokens)) if x != y]
            assert len(changed) == GCG.swaps_per_candidate
            assert all(c.tokens[p] in top[p] for p in changed)


def test_gcg_score_never_decreases_and_keeps_the_best(gcg_run):
    _, steps = gcg_run
    for before, _, candidates, after in steps:
        assert after.score >= before.score
        best = max(candidates, key=lambda c: c.score)
        assert after == (best if best.score > before.score else before)


def test_gcg_neighbour_swaps_stay_near_the_current_tokens(world):
    context, starts = world
    ctx = context()
    phase = GcgPhase(ctx, replace(GCG, neighbours=8, top_k=4, far=0), starts[0])
    near = Neighbours(ctx.embeddings(), ctx.allowed, 8)
    top = phase.top()
    assert top.shape == (4, 4)
    for position, token in enumerate(starts[0].tokens):
        assert set(top[position].tolist()) <= set(near(token).tolist())


def test_gcg_far_swaps_are_the_largest_gradients_beyond_the_neighbours(world):
    context, starts = world
    ctx, tokens = context(), starts[0].tokens
    phase = GcgPhase(ctx, replace(GCG, neighbours=8, top_k=4, far=6), starts[0])
    near = Neighbours(ctx.embeddings(), ctx.allowed, 8)
    top = phase.top()
    assert top.shape == (4, 10)
    gradient = token_gradients(ctx, tokens, ctx.embeddings().astype(mx.float32))
    for position, token in enumerate(tokens):
        assert set(top[position, :4].tolist()) <= set(near(token).tolist())
        beyond = ctx.allowed.copy()
        beyond[near(token)] = False
        beyond[token] = False
        row = np.where(beyond, gradient[position], -np.inf)
        assert list(top[position, 4:]) == list(np.argsort(-row, kind="stable")[:6])


def test_top_k_are_the_largest_one_hot_gradients(world, search_model):
    context, starts = world
    ctx, tokens = context(), starts[1].tokens
    table = ctx.embeddings().astype(mx.float32)
    ids = mx.array(ctx.tokenizer.from_content_ids(tokens))
    framed = search_model.token_embeddings(ids)

    def surrogate(one_hot):  # the alias as one_hot @ table between the frame's start and end
        content = (one_hot @ table)[None]
        embeds = mx.concatenate([framed[:, :1], content, framed[:, 1 + len(tokens) :]], axis=1)
        return ctx.scorer.surrogate(embeds, ids == 0)

    one_hot = mx.zeros((len(tokens), table.shape[0])).at[mx.arange(len(tokens)), mx.array(tokens)].add(1.0)
    direct = np.array(mx.grad(surrogate)(one_hot))
    gradient = token_gradients(ctx, tokens, table)
    np.testing.assert_allclose(gradient, direct, rtol=1e-4, atol=1e-6 * np.abs(direct).max())
    position, k = 2, 10
    top = top_tokens(gradient, ctx.allowed, tokens, k)
    row = np.where(ctx.allowed, direct[position], -np.inf)
    row[tokens[position]] = -np.inf
    assert list(top[position]) == list(np.argsort(-row, kind="stable")[:k])
    assert tokens[position] not in top[position] and ctx.allowed[top].all()


def test_gcg_state_round_trip_is_bit_identical(world, gcg_run):
    context, starts = world
    full, _ = gcg_run
    ctx = context()
    half = GcgPhase(ctx, GCG, starts[0])
    half.step()
    resumed = GcgPhase(ctx, GCG, starts[2])  # the start and ctx.rng draw are overwritten by restore
    resumed.restore(_json(half.state()))
    resumed.step()
    assert resumed.current == full.current and resumed.best == full.best
    assert resumed.state() == full.state() and resumed.done


def test_neighbours_are_the_nearest_allowed_by_cosine(world):
    context, starts = world
    ctx = context()
    table = np.array(ctx.embeddings().astype(mx.float32))
    token = starts[0].tokens[0]
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    cosine = np.where(ctx.allowed, unit @ unit[token], -np.inf)
    cosine[token] = -np.inf
    near = Neighbours(ctx.embeddings(), ctx.allowed, 8)
    assert list(near(token)) == list(np.argsort(-cosine, kind="stable")[:8])
    assert near(token) is near.cache[token]  # computed once


@pytest.fixture(scope="module")
def evolution_run(world):
    context, starts = world
    phase = EvolutionPhase(context(), EVOLUTION, starts)
    generations = []
    while not phase.done:
        before = list(phase.population)
        generations.append((before, phase.step(), list(phase.population)))
    return phase, generations


def test_evolution_keeps_the_elite_and_respects_allowed(world, evolution_run):
    context, _ = world
    allowed = context().allowed
    phase, generations = evolution_run
    assert len(generations) == EVOLUTION.generations
    for before, children, after in generations:
        # raced children that cannot beat the weakest member are dropped unscored
        assert len(children) <= EVOLUTION.population - min(EVOLUTION.elite, len(before))
        assert len(after) == EVOLUTION.population
        assert after == sorted(before + children, key=lambda c: -c.score)[: EVOLUTION.population]  # (mu + lambda)
        assert after[0].score >= before[0].score
        assert all(allowed[list(c.tokens)].all() for c in children)
    assert phase.best == generations[-1][2][0]


def test_evolution_state_round_trip_is_bit_identical(world, evolution_run):
    context, starts = world
    full, _ = evolution_run
    ctx = context()
    half = EvolutionPhase(ctx, EVOLUTION, starts)
    half.step()
    resumed = EvolutionPhase(ctx, EVOLUTION, starts[:1])
    resumed.restore(_json(half.state()))
    resumed.step()
    assert resumed.population == full.population and resumed.best == full.best
    assert resumed.state() == full.state() and resumed.done


@pytest.mark.parametrize(
    "make",
    [
        lambda ctx, starts: GcgPhase(ctx, GCG, starts[0]),
        lambda ctx, starts: EvolutionPhase(
            ctx, replace(EVOLUTION, generations=3, mutations=2, neighbour_fraction=0.0), starts
        ),
    ],
    ids=["gcg", "evolution"],
)
def test_racing_changes_no_decision(world, make):
    """A phase that races its candidates against its bar ends exactly where scoring every
    candidate in full ends, on fewer evaluations: racing only skips work whose result the phase
    would discard. The targets are what a hidden prompt predicts, and the starts are one token
    away from it, so that the bar is high and most swaps fall below it."""
    context, _ = world
    base = context()
    hidden = tuple(base.tokenizer.encode("a big red car"))
    framed = mx.array(base.tokenizer.from_content_ids(hidden))
    images = 4  # enough that a bad candidate's first images rule it out
    pixels = np.random.default_rng(5).uniform(-1, 1, (images, 224, 224, 3)).astype(np.float32)
    features = base.model.encode_image(mx.array(pixels))
    planted = base.model.ground(features, base.model.encode_text(mx.repeat(framed, images, axis=0)), mx.arange(images))
    targets = []
    for i in range(images):
        chosen = np.array(planted.scores[i]) > CFG.threshold
        targets.append(MaskTarget(np.array(planted.masks[i])[chosen] > 0, base.scorer.targets[0].crowd))
    assert any(t.masks.shape[0] for t in targets)
    # one pair per batch, so that racing may stop a candidate after its first image
    scorer = Scorer(base.model, features, targets, CFG, pairs_per_batch=1)
    allowed = base.allowed.copy()
    allowed[list(hidden)] = True
    rng = np.random.default_rng(3)
    near = [
        hidden[:p] + (int(rng.choice(np.flatnonzero(allowed))),) + hidden[p + 1 :] for p in list(range(len(hidden))) * 2
    ]
    ends = {}
    for race in (True, False):
        ctx = SearchContext(base.model, scorer, base.tokenizer, allowed, len(hidden), np.random.default_rng(7))
        if not race:
            evaluate = ctx.evaluate
            ctx.evaluate = lambda candidates, bar=None: evaluate(candidates)
        starts = sorted(ctx.evaluate(near), key=lambda c: -c.score)
        phase, before = make(ctx, starts), scorer.evaluations
        while not phase.done:
            phase.step()
        ends[race] = (phase.state(), scorer.evaluations - before, ctx.bounds)
    (raced, raced_cost, bounds), (full, full_cost, _) = ends[True], ends[False]
    assert raced == full
    assert bounds and raced_cost < full_cost  # something was raced out, and that saved work


def test_seed_style_scores_one_neighbour_mutant_at_a_time(world):
    from baselines import SEED_STYLE as seed

    assert (seed.population, seed.neighbour_fraction, seed.batch_evaluation, seed.race) == (20, 1.0, False, False)
    context, starts = world
    ctx = context()
    calls, evaluate = [], ctx.evaluate

    def counted(candidates, bar=None):
        assert bar is None  # the baseline scores every child in full
        calls.append(len(candidates))
        return evaluate(candidates, bar)

    ctx.evaluate = counted
    # smaller, and without crossover or retries so that each child is one neighbour swap away
    phase = EvolutionPhase(ctx, replace(seed, population=4, crossover=0.0, retries=0), starts)
    members = list(phase.population)
    children = phase.step()
    assert calls == [1] * len(children) and len(children) == 4 - seed.elite
    for child in children:
        assert any(
            all(x == y or y in phase.neighbours(x) for x, y in zip(m.tokens, child.tokens))
            and sum(x != y for x, y in zip(m.tokens, child.tokens)) == 1
            for m in members
        )
