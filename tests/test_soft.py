"""The token index and the soft-prompt phase on the tiny model: the allowed mask, nearest
tokens, the surrogate rising under Adam, PEZ candidates made of allowed tokens only, exact
evaluations counted, soft prompts side by side as they would move alone, and a checkpoint that
resumes bit for bit."""

from __future__ import annotations

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_alias.search.objective import MaskTarget
from mlx_alias.search.phase import SearchContext
from mlx_alias.search.scorer import Scorer
from mlx_alias.search.soft import SoftConfig, SoftPromptPhase
from mlx_alias.search.vocab import TokenIndex, allowed_tokens, principal_span
from mlx_alias.tokenizer import load_tokenizer


def context(model, scorer, seed: int, length: int = 3) -> SearchContext:
    tokenizer = load_tokenizer()
    return SearchContext(model, scorer, tokenizer, allowed_tokens(tokenizer), length, np.random.default_rng(seed))


def test_allowed_tokens():
    tok = load_tokenizer()
    allowed = allowed_tokens(tok)
    assert allowed.shape == (tok.vocab_size,) and allowed.sum() == tok.vocab_size - 3
    assert not allowed[[0, tok.sot_id, tok.eot_id]].any()
    strict = allowed_tokens(tok, roundtrip_only=True)
    assert not (strict & ~allowed).any() and 30_000 < strict.sum() < allowed.sum()
    kept = np.flatnonzero(strict)
    for i in np.random.default_rng(0).choice(kept, 300, replace=False):
        assert tok.encode(tok.decode([i])) == [i] and tok.roundtrips([i])
    assert not strict[1]  # '"' without its end-of-word mark encodes as '"</w>' (257)
    assert strict[257] and strict[tok.encode("car")[0]]


def test_nearest_finds_own_token(mlx_model):
    table = mlx_model.text_encoder.text_model.embeddings.token_embedding.weight
    allowed = allowed_tokens(load_tokenizer())
    index = TokenIndex(table, allowed)
    ids = [320, 1615, 2368, 49000]
    top = index.nearest(table[mx.array(ids)], k=3)
    assert top.shape == (4, 3) and list(top[:, 0]) == ids
    assert index.project(5 * table[mx.array(ids)]) == tuple(ids)  # cosine: the norm does not matter
    blocked = allowed.copy()
    blocked[ids] = False
    assert not set(TokenIndex(table, blocked).nearest(table[mx.array(ids)], k=5).ravel()) & set(ids)


def test_principal_span():
    rng = np.random.default_rng(0)
    low_rank = mx.array(rng.normal(size=(200, 3)) @ rng.normal(size=(3, 16)), dtype=mx.float32)
    span = principal_span(low_rank, 0.999)
    assert span is not None and float(mx.trace(span)) == pytest.approx(3.0, abs=1e-4)  # rank 3
    np.testing.assert_allclose(np.array(span @ span), np.array(span), atol=1e-5)  # a projector
    np.testing.assert_allclose(np.array(low_rank @ span), np.array(low_rank), atol=1e-4)  # tokens untouched
    outside = mx.array(rng.normal(size=(4, 16)), dtype=mx.float32)
    assert float(mx.abs(outside @ span - outside).max()) > 0.1
    assert principal_span(low_rank, 1.0) is None  # the whole space asked for
    full = mx.array(rng.normal(size=(200, 16)), dtype=mx.float32)
    assert principal_span(full, 0.999) is None  # every direction holds more than 0.1%


def test_soft_prompt_stays_in_the_token_span(mlx_model, scorer):
    """Adam's per-coordinate steps would leave the span; every step is brought back into it."""
    ctx = context(mlx_model, scorer, seed=0)
    span = principal_span(ctx.embeddings(), 0.9)
    assert span is not None
    start = ctx.evaluate([tuple(ctx.tokenizer.encode("a red car"))])[0]
    phase = SoftPromptPhase(ctx, SoftConfig(steps=3, learning_rate=1.0, evaluate_every=100, span_energy=0.9), [start])
    for _ in range(3):
        phase.step()
    moved = phase.vectors - phase._embed(start.tokens)
    assert float(mx.abs(moved).max()) > 0
    np.testing.assert_allclose(np.array(phase.vectors @ span), np.array(phase.vectors), atol=1e-4)


def test_config_is_checked(mlx_model, scorer):
    ctx = context(mlx_model, scorer, seed=0)
    with pytest.raises(ValueError, match="start candidate"):
        SoftPromptPhase(ctx, SoftConfig(init="tokens"))
    with pytest.raises(ValueError, match="init"):
        SoftPromptPhase(ctx, SoftConfig(init="zeros"))


def test_surrogate_rises_and_evaluations_are_counted(mlx_model, scorer):
    ctx = context(mlx_model, scorer, seed=0)
    start = ctx.evaluate([tuple(ctx.tokenizer.encode("a red car"))])[0]
    before = scorer.evaluations
    phase = SoftPromptPhase(ctx, SoftConfig(steps=10, learning_rate=1.0, pez=False, evaluate_every=100), [start])
    values, found = [], []
    while not phase.done:
        found += phase.step()
        values.append(phase.value)
    # this model's surrogate starts near 0 (-0.023: no overlap with the positive's instance, a
    # faint soft prediction on the negative) and rises at every step as that prediction fades
    assert len(values) == 10 and values[-1] > values[0] + 0.015 and all(np.diff(values) > 0)
    assert len(found) == 1 and phase.best.score >= start.score  # the last step scores the projection
    assert scorer.evaluations - before == (found[0].tokens != start.tokens) * scorer.images


def test_soft_prompts_side_by_side_move_as_alone(mlx_model, scorer):
    """Each of several soft prompts takes the steps it would take alone from its start (its own
    gradient and Adam moments, its own patience: one that stops stays put while the others move);
    the best starts are taken, the phase's best is the best of theirs, and a soft prompt beyond
    the starts given begins at random tokens, held to the best start."""
    ctx = context(mlx_model, scorer, seed=0, length=2)
    starts = ctx.evaluate([tuple(ctx.tokenizer.encode(t)) for t in ("red car", "blue sky", "small dog")])
    config = SoftConfig(steps=8, learning_rate=1.0, evaluate_every=1, patience=2, starts=2)
    together = SoftPromptPhase(ctx, config, starts)
    ranked = sorted(starts, key=lambda c: -c.score)
    assert together.bests == ranked[:2]
    alone = [
        SoftPromptPhase(context(mlx_model, scorer, seed=0, length=2), dataclasses.replace(config, starts=1), [c])
        for c in ranked[:2]
    ]
    while not together.done:
        together.step()
        for phase in alone:
            phase.step()
    for k, phase in enumerate(alone):
        np.testing.assert_allclose(np.array(together.vectors[k]), np.array(phase.vectors[0]), rtol=1e-5, atol=1e-6)
        assert together.bests[k].score == phase.best.score
    assert together.best == max((p.best for p in alone), key=lambda c: c.score)
    assert together.stale == [p.stale[0] for p in alone] and together.active() == []  # both stopped early
    assert together.taken < config.steps

    held = SoftPromptPhase(
        context(mlx_model, scorer, seed=0, length=2), dataclasses.replace(config, patience=100), starts
    )
    held.step(), held.step()  # momentum built up
    held.stale[1] = 100  # as if the second had stopped: it stays put, the first moves on
    before = np.array(held.vectors)
    held.step()
    assert not np.allclose(np.array(held.vectors[0]), before[0]) and np.array_equal(
        np.array(held.vectors[1]), before[1]
    )

    wide = SoftPromptPhase(context(mlx_model, scorer, seed=0, length=2), dataclasses.replace(config, starts=5), starts)
    assert wide.vectors.shape[0] == 5 and wide.bests[3:] == [ranked[0], ranked[0]]
    np.testing.assert_array_equal(
        np.array(wide.vectors[:3]), np.array(together._embed(np.array([c.tokens for c in ranked])))
    )
    with pytest.raises(ValueError, match="starts"):
        SoftPromptPhase(ctx, dataclasses.replace(config, starts=0), starts)


def test_pez_candidates_and_exact_resume(mlx_model, scorer):
    config = SoftConfig(steps=6, learning_rate=0.3, pez=True, evaluate_every=2, init="random", patience=100)
    whole = SoftPromptPhase(ctx_whole := context(mlx_model, scorer, seed=3), config)
    before = scorer.evaluations
    found = [c for _ in range(6) for c in whole.step()]
    assert whole.done and len(found) == 3  # steps 2, 4, 6
    assert all(len(c.tokens) == 3 and ctx_whole.allowed[list(c.tokens)].all() for c in found)
    assert scorer.evaluations - before == len(ctx_whole.seen) * scorer.images
    assert whole.best.score == max(c.score for c in found)

    first = SoftPromptPhase(context(mlx_model, scorer, seed=3), config)
    for _ in range(3):
        first.step()
    saved = first.state()
    json.dumps({k: v for k, v in saved.items() if not isinstance(v, np.ndarray)})  # the rest is JSON-able
    resumed = SoftPromptPhase(context(mlx_model, scorer, seed=99), config)  # another seed and init
    resumed.restore(saved)
    for _ in range(3):
        resumed.step()
    end, expected = resumed.state(), whole.state()
    for key in ("vectors", "m", "v"):
        assert np.array_equal(end[key], expected[key]), key
    assert resumed.best == whole.best and end["rng"] == expected["rng"] and resumed.done


def test_compiled_gradient_matches_and_reads_current_features(mlx_model, scorer):
    """The phase's compiled value and gradient equal the uncompiled ones, also after the context's
    scorer changes to other images and targets (a compiled function keeps the arrays it closed
    over unless they are captured inputs). Tolerance 1e-5 relative: the same float32 operations,
    fused into kernels (measured: equal to the bit, on three random starts)."""
    ctx = context(mlx_model, scorer, seed=0)
    phase = SoftPromptPhase(ctx, SoftConfig(init="random"))
    point = phase.vectors[0]
    values = []
    for other_images in (False, True):
        if other_images:  # and the instance 20 rows lower
            pixels = np.random.default_rng(1).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
            targets = [MaskTarget(np.roll(t.masks, 20, axis=1), t.crowd) for t in scorer.targets]
            ctx.scorer = Scorer(mlx_model, mlx_model.encode_image(mx.array(pixels)), targets, scorer.config)
        value, grad = phase._loss_and_grad(point)
        expected_value, expected_grad = mx.value_and_grad(phase._loss)(point)
        assert abs(float(value) - float(expected_value)) <= 1e-5 * abs(float(expected_value))
        assert float(mx.linalg.norm(grad - expected_grad) / mx.linalg.norm(expected_grad)) <= 1e-5
        values.append(float(value))
    assert abs(values[1] - values[0]) > 1e-3  # the second call did see the new images


def test_minibatch_steps_climb_the_surrogate_of_their_images(mlx_model, scorer):
    """The scorer's surrogate over an index array is the surrogate of a scorer holding only those
    images (tolerance 1e-5 relative: the same float32 operations on gathered rows); a soft phase
    with ``images`` draws a fresh minibatch at each step, positives and negatives in proportion,
    takes its gradient there, and resumes to the same draws."""
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    alone = Scorer(mlx_model, mlx_model.encode_image(mx.array(pixels[1:])), scorer.targets[1:], scorer.config)
    ctx = context(mlx_model, scorer, seed=0)
    phase = SoftPromptPhase(ctx, SoftConfig(init="random"))
    framed, padding = phase._framed(phase.vectors[0]), phase._frame["padding"]
    subset = float(scorer.surrogate(framed, padding, images=mx.array([1])))
    expected = float(alone.surrogate(framed, padding))
    assert abs(subset - expected) <= 1e-5 * abs(expected) and expected != 0
    whole = float(scorer.surrogate(framed, padding))
    assert float(scorer.surrogate(framed, padding, images=mx.array([1, 0]))) == pytest.approx(whole, rel=1e-5)

    # six images, two of them positive: three a step are one positive and two negatives
    rng = np.random.default_rng(1)
    six = rng.uniform(-1, 1, (6, 224, 224, 3)).astype(np.float32)
    targets = [scorer.targets[0]] * 2 + [scorer.targets[1]] * 4
    wide = Scorer(mlx_model, mlx_model.encode_image(mx.array(six)), targets, scorer.config)
    config = SoftConfig(init="random", images=3, steps=6, evaluate_every=3, patience=100)
    batched = SoftPromptPhase(context(mlx_model, wide, seed=4), config)
    draws = []
    for _ in range(3):
        point = batched.vectors[0]
        batched.step()
        drawn = np.array(batched._frame["images"])
        draws.append(tuple(drawn))
        assert len(set(drawn)) == 3 and sorted(drawn < 2) == [False, False, True]
        value = float(wide.surrogate(batched._framed(point), padding, images=mx.array(drawn)))
        assert batched.value == pytest.approx(value, rel=1e-5)
    assert len(set(draws)) > 1  # fresh draws
    resumed = SoftPromptPhase(context(mlx_model, wide, seed=9), config)
    resumed.restore(batched.state())
    for _ in range(3):
        batched.step(), resumed.step()
        assert np.array_equal(np.array(batched._frame["images"]), np.array(resumed._frame["images"]))
    assert np.array_equal(np.array(batched.vectors), np.array(resumed.vectors))
    with pytest.raises(ValueError, match="images"):
        SoftPromptPhase(ctx, SoftConfig(init="random", images=-1))
