"""The soft-prompt phase: gradient ascent on the surrogate over ``length`` continuous input
vectors, projected to the nearest real tokens to be scored exactly; several such soft prompts
side by side, from different starts, as the surrogate has many local optima.

The soft prompt stands where an alias's token embeddings would: [start token, the vectors,
end token, padding up to the context length], the padding masked as SAM3 masks id 0. Adam
maximises the surrogate. With ``pez`` (Wen et al., 2023, "Hard Prompts Made Easy") the
gradient is taken at the prompt's projection to real tokens and applied to the continuous
vectors, so that the optimisation sees what the exact score will see. Every
``evaluate_every`` steps, and at the last one, each soft prompt's projection is scored exactly
through ``ctx.evaluate``; ``best`` is the best candidate so scored (or the best start given).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_alias.tokenizer import CONTEXT_LENGTH

from .phase import Candidate, SearchContext, pack, unpack
from .scorer import Scorer
from .vocab import TokenIndex, principal_span


@dataclass(frozen=True)
class SoftConfig:
    steps: int = 100  # gradient steps at most
    # Adam's step size, in units of the embedding table's per-coordinate RMS, so that one
    # value suits every model size (Adam moves each coordinate by about the step size).
    learning_rate: float = 0.1
    pez: bool = False  # gradient at the projected prompt, applied to the continuous one
    evaluate_every: int = 10  # steps between exact scorings of the projection
    # "tokens": the best start candidates' embeddings (random allowed tokens where there are
    # fewer starts than soft prompts); "random": random allowed tokens'
    init: str = "tokens"
    # Soft prompts optimised side by side, each from its own start: one gradient ascent ends in
    # the local optimum of its start. One here (the phase alone); the search's default is 8
    # (``SearchConfig.soft``).
    starts: int = 1
    patience: int = 5  # a soft prompt stops after this many exact scorings in a row without a better projection
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decays
    eps: float = 1e-8  # Adam's denominator floor
    # The soft prompt stays in the span of the token table's principal directions holding this
    # fraction of its energy (1: the whole space), where real tokens lie: a move outside it is one
    # that projection to real tokens undoes.
    span_energy: float = 0.999
    # Images each gradient step sees (0: all of them): a fresh random minibatch per step, with
    # positives and negatives in the training images' proportion, for a step that costs this
    # share of a full one. The projections are still scored exactly on every image.
    images: int = 0


def adam(
    x: mx.array, grad: mx.array, m: mx.array, v: mx.array, t: int, lr: float, betas: tuple[float, float], eps: float
) -> tuple[mx.array, mx.array, mx.array]:
    """One Adam step descending ``grad`` at step ``t`` (from 1): new (x, m, v)."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * mx.square(grad)
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return x - lr * m_hat / (mx.sqrt(v_hat) + eps), m, v


class CompiledGradient:
    """``mx.compile(mx.value_and_grad(loss))``, reading its arrays afresh at every call. Inside
    mx.grad MLX runs even compiled functions op by op; compiling the whole step fuses them (the
    CPU's GELU and attention kernels, ``model/common.py``). A compiled function keeps the arrays
    it closes over as constants, so ``state()`` returns the containers (modules, dicts, lists)
    through which ``loss`` reads the arrays that may change: compile puts its tracers into these
    very objects while it traces, and passes their current contents at every call. An array in
    them that ``loss`` also reaches another way (a closure) makes compile refuse ("uncaptured
    inputs"). Python numbers ``loss`` reads (the objective's settings) are baked in."""

    def __init__(self, loss: Callable[[mx.array], mx.array], state: Callable[[], Any]):
        self._state = state
        self._captured: list[Any] = []
        self._step = mx.compile(mx.value_and_grad(loss), inputs=self._captured)

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """``loss(x)`` and its gradient with respect to ``x``."""
        self._captured[:] = [self._state()]
        return self._step(x)


def surrogate_state(scorer: Scorer) -> list[Any]:
    """The containers of the arrays ``scorer.surrogate`` reads (see ``CompiledGradient``)."""
    return [scorer.model, vars(scorer.features), vars(scorer.dense)]


class SoftPromptPhase:
    name = "soft"

    def __init__(self, ctx: SearchContext, config: SoftConfig = SoftConfig(), starts: list[Candidate] = ()):
        if config.init not in ("tokens", "random"):
            raise ValueError(f"init must be 'tokens' or 'random', got {config.init!r}")
        if config.starts < 1:
            raise ValueError(f"starts must be at least 1, got {config.starts}")
        starts = sorted({c.tokens: c for c in starts if len(c.tokens) == ctx.length}.values(), key=lambda c: -c.score)
        if config.init == "tokens" and not starts:
            raise ValueError(f"init='tokens' needs a start candidate of {ctx.length} tokens")
        if not 1 <= ctx.length <= CONTEXT_LENGTH - 2:
            raise ValueError(f"length must lie in [1, {CONTEXT_LENGTH - 2}], got {ctx.length}")
        if config.images < 0:
            raise ValueError(f"images must be 0 (all) or more, got {config.images}")
        self.ctx, self.config = ctx, config
        table = ctx.embeddings()
        self.index = TokenIndex(table, ctx.allowed)
        self.span = principal_span(table, config.span_energy)
        # Our own generator, seeded from the driver's, so that our draws are saved with us.
        self.rng = ctx.phase_rng()
        chosen = starts[: config.starts] if config.init == "tokens" else []
        pool = np.flatnonzero(ctx.allowed)
        ids = [c.tokens for c in chosen] + [
            tuple(self.rng.choice(pool, ctx.length)) for _ in range(config.starts - len(chosen))
        ]
        self.vectors = mx.stack([self._embed(t) for t in ids])  # [starts, length, width] float32
        self.m, self.v = mx.zeros_like(self.vectors), mx.zeros_like(self.vectors)
        self.taken = 0  # gradient steps so far
        self.stale = [0] * config.starts  # per soft prompt, exact scorings since its best last improved
        # per soft prompt, the best candidate it has had: its start, then its projections; one
        # from random tokens is held to the best start given, which its projections must beat to matter
        self.bests: list[Candidate | None] = chosen + [starts[0] if starts else None] * (config.starts - len(chosen))
        self.value: float | None = None  # highest surrogate where the last gradients were taken
        self.step_size = config.learning_rate * float(mx.sqrt(mx.mean(mx.square(table.astype(mx.float32)))))

        tok, n = ctx.tokenizer, ctx.length
        frame = ctx.model.token_embeddings(
            mx.array([[tok.sot_id, *[tok.pad_id] * n, tok.eot_id] + [tok.pad_id] * (CONTEXT_LENGTH - n - 2)])
        )
        self._frame = {
            "head": frame[:, :1],
            "tail": frame[:, n + 1 :],  # start; end and padding
            "padding": mx.array(np.arange(CONTEXT_LENGTH) > n + 1)[None],
        }  # True after the end token
        positive = np.array([len(t.masks) > 0 for t in ctx.scorer.targets])
        self._positives, self._negatives = np.flatnonzero(positive), np.flatnonzero(~positive)
        if 0 < config.images < len(positive):  # the minibatch, an input of the compiled step, drawn at each step
            self._frame["images"] = mx.arange(config.images)
        self._loss_and_grad = CompiledGradient(self._loss, self._compiled_state)

    def _minibatch(self) -> np.ndarray:
        """``config.images`` image indices drawn without replacement, positives and negatives in
        their proportion (rounded at random, so exact on average; at least one of each where
        both exist and two or more are drawn)."""
        k, total = self.config.images, len(self._positives) + len(self._negatives)
        share = int(k * len(self._positives) / total + self.rng.random())
        if k >= 2 and len(self._positives) and len(self._negatives):
            share = min(max(share, 1), k - 1)
        share = min(max(share, k - len(self._negatives)), len(self._positives))
        return np.concatenate(
            [
                self.rng.choice(self._positives, share, replace=False),
                self.rng.choice(self._negatives, k - share, replace=False),
            ]
        ).astype(np.int32)

    def _embed(self, ids: tuple[int, ...] | np.ndarray) -> mx.array:
        return self.ctx.embeddings()[mx.array(np.asarray(ids))].astype(mx.float32)

    def _compiled_state(self) -> list[Any]:
        """The containers of the arrays ``_loss`` reads (see ``CompiledGradient``)."""
        return [surrogate_state(self.ctx.scorer), self._frame]

    def _framed(self, vectors: mx.array) -> mx.array:
        """One soft prompt [length, width] as the text encoder's input [1, context, width]."""
        head, tail = self._frame["head"], self._frame["tail"]
        return mx.concatenate([head, vectors[None].astype(head.dtype), tail], axis=1)

    def _loss(self, vectors: mx.array) -> mx.array:
        return -self.ctx.surrogate(self._framed(vectors), self._frame["padding"], self._frame.get("images"))

    def active(self) -> list[int]:
        """The soft prompts still moving: those whose projections improved within ``patience``."""
        return [k for k, stale in enumerate(self.stale) if stale < self.config.patience]

    @property
    def done(self) -> bool:
        return self.taken >= self.config.steps or not self.active()

    @property
    def best(self) -> Candidate | None:
        return max((c for c in self.bests if c is not None), key=lambda c: c.score, default=None)

    def projections(self, which: list[int]) -> list[tuple[int, ...]]:
        """These soft prompts' nearest allowed tokens (one similarity product for all of them)."""
        rows = self.vectors[mx.array(which)]
        nearest = self.index.nearest(rows.reshape(-1, rows.shape[-1]))[:, 0].reshape(len(which), -1)
        return [tuple(int(i) for i in ids) for ids in nearest]

    def step(self) -> list[Candidate]:
        """One Adam step of every active soft prompt (one gradient each: a batch of them would
        multiply the memory a full-size surrogate's gradient takes); on evaluation steps (and the
        last) their projections' exact scores."""
        if self.done:
            return []
        cfg, active = self.config, self.active()
        if "images" in self._frame:
            self._frame["images"] = mx.array(self._minibatch())
        points = (
            mx.stack([self._embed(t) for t in self.projections(active)]) if cfg.pez else self.vectors[mx.array(active)]
        )
        losses, grads = zip(*(self._loss_and_grad(point) for point in points))
        gradient = mx.zeros_like(self.vectors)
        gradient[mx.array(active)] = mx.stack(grads)
        self.taken += 1
        moved = adam(self.vectors, gradient, self.m, self.v, self.taken, self.step_size, cfg.betas, cfg.eps)
        if self.span is not None:  # Adam's per-coordinate steps leave the span; back into it
            moved = (moved[0] @ self.span, *moved[1:])
        # a stopped soft prompt stays where it stopped (Adam's momentum would carry it on)
        moving = mx.array(np.isin(np.arange(cfg.starts), active))[:, None, None]
        self.vectors, self.m, self.v = (
            mx.where(moving, new, old) for new, old in zip(moved, (self.vectors, self.m, self.v))
        )
        mx.eval(self.vectors, self.m, self.v)
        self.value = -min(float(loss) for loss in losses)
        if self.taken % cfg.evaluate_every and self.taken < cfg.steps:
            return []
        projections = self.projections(active)
        # a projection counts only if it beats its own soft prompt's best: race the rest out
        bests = [self.bests[k] for k in active]
        bar = None if any(c is None for c in bests) else min(c.score for c in bests)
        scored = {c.tokens: c for c in self.ctx.evaluate(projections, bar)}
        for k, tokens in zip(active, projections):
            found = scored.get(tokens)
            if found is not None and (self.bests[k] is None or found.score > self.bests[k].score):
                self.bests[k], self.stale[k] = found, 0
            else:
                self.stale[k] += 1
        return list(scored.values())

    def state(self) -> dict[str, Any]:
        return {
            "vectors": np.array(self.vectors),
            "m": np.array(self.m),
            "v": np.array(self.v),
            "taken": self.taken,
            "stale": list(self.stale),
            "value": self.value,
            "bests": [None if c is None else pack(c) for c in self.bests],
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state["vectors"].shape != tuple(self.vectors.shape):
            raise ValueError(f"saved soft prompts are {state['vectors'].shape}, expected {tuple(self.vectors.shape)}")
        self.vectors, self.m, self.v = (mx.array(state[k], dtype=mx.float32) for k in ("vectors", "m", "v"))
        self.taken, self.stale, self.value = int(state["taken"]), [int(s) for s in state["stale"]], state["value"]
        self.bests = [None if c is None else unpack(c) for c in state["bests"]]
        self.rng.bit_generator.state = state["rng"]
