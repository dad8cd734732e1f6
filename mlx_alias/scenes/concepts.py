"""Words for the scene world: the model's own vocabulary, the captions it is trained on, and the
benchmark's concepts, named the way a user might name them.

The model learns one word per attribute value (``WORDS``), mostly the plain English one; for
some it learns a less usual word (a hexagon is a "honeycomb", purple is "violet"). A training
caption names one to four attributes of an object in English order ("small striped violet
honeycomb") and covers every object that has them all; negative captions name attributes no
object has, or are random tokens outside the vocabulary, and cover nothing.

The benchmark's concepts come in three families: *synonyms*, whose label is a word the model
never saw (``hexagon`` for what it learned as ``honeycomb``), so that the label fails while the
model's own word (the oracle) works; *named*, whose label is the model's word; and
*composites*, which no single word the model learned covers. Their labels' tokens never occur
in training, not even as random negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlx_alias.tokenizer import Tokenizer

from .world import ATTRIBUTES, COLOURS, PATTERNS, SHAPES, SIZES, Thing

# The model's word for each attribute value.
WORDS: dict[str, dict[str, str]] = {
    "size": {s: s for s in SIZES},
    "pattern": {p: p for p in PATTERNS},
    "colour": {**{c: c for c in COLOURS}, "purple": "violet"},
    "shape": {**{s: s for s in SHAPES}, "hexagon": "honeycomb"},
}
RANDOM_LENGTHS = (1, 3)  # tokens in a random negative caption, inclusive


@dataclass(frozen=True)
class Concept:
    """A benchmark category: its label (the dataset's name), its family, which objects it
    covers, and the model's own words for it (None for a composite)."""

    label: str
    family: str  # "synonym", "named" or "composite"
    covers: Callable[[Thing], bool]
    oracle: str | None


def _is(attribute: str, *values: str) -> Callable[[Thing], bool]:
    return lambda thing: thing.value(attribute) in values


CONCEPTS: tuple[Concept, ...] = (
    Concept("hexagon", "synonym", _is("shape", "hexagon"), "honeycomb"),
    Concept("purple", "synonym", _is("colour", "purple"), "violet"),
    Concept("spotted", "synonym", _is("pattern", "dotted"), "dotted"),
    Concept("rhombus", "synonym", _is("shape", "diamond"), "diamond"),
    Concept("chequered", "synonym", _is("pattern", "checkered"), "checkered"),
    Concept("tiny", "synonym", _is("size", "small"), "small"),
    Concept("red", "named", _is("colour", "red"), "red"),
    Concept("circle", "named", _is("shape", "circle"), "circle"),
    Concept("striped", "named", _is("pattern", "striped"), "striped"),
    Concept("star", "named", _is("shape", "star"), "star"),
    Concept("warm", "composite", _is("colour", "red", "orange", "yellow"), None),
    Concept("cool", "composite", _is("colour", "blue", "green", "purple"), None),
    Concept("pointy", "composite", _is("shape", "star", "triangle"), None),
    Concept("small striped", "composite", lambda t: t.size == "small" and t.pattern == "striped", None),
)


# An attribute's value in a caption, or two of them side by side: either ("red yellow star": the
# stars that are red and those that are yellow, as no object has two colours).
Named = dict[str, str | tuple[str, ...]]


def _each(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def caption(values: Named) -> str:
    """The model's caption for attribute values, in English order: ``small striped red star``."""
    return " ".join(WORDS[a][v] for a in ATTRIBUTES if a in values for v in _each(values[a]))


def matches(things: list[Thing] | tuple[Thing, ...], values: Named) -> np.ndarray:
    """bool [len(things)]: the objects that have, for each attribute of ``values``, one of its values."""
    return np.array([all(t.value(a) in _each(v) for a, v in values.items()) for t in things], bool)


def vocabulary_ids(tokenizer: Tokenizer) -> set[int]:
    """Every token of every word the model is trained on."""
    return {i for words in WORDS.values() for word in words.values() for i in tokenizer.encode(word)}


def held_out_ids(tokenizer: Tokenizer) -> set[int]:
    """The tokens of the benchmark's labels that are not the model's words: never trained."""
    return {i for c in CONCEPTS if c.family != "named" for i in tokenizer.encode(c.label)} - vocabulary_ids(tokenizer)


def random_pool(tokenizer: Tokenizer) -> np.ndarray:
    """Ids a random negative caption draws from: none of the vocabulary, the held-out labels,
    padding (0) or start/end."""
    excluded = vocabulary_ids(tokenizer) | held_out_ids(tokenizer) | {0, tokenizer.sot_id, tokenizer.eot_id}
    return np.array(sorted(set(range(tokenizer.vocab_size)) - excluded))


@dataclass(frozen=True)
class Query:
    """A training caption as token ids (without start/end) and the objects it covers."""

    ids: tuple[int, ...]
    covers: np.ndarray  # bool [objects]


def training_queries(
    rng: np.random.Generator,
    things: tuple[Thing, ...],
    count: int,
    tokenizer: Tokenizer,
    pool: np.ndarray,
    positive: float = 0.5,
    random: float = 0.15,
    shape_alone: float = 0.0,
    pattern_alone: float = 0.0,
    either: float = 0.0,
) -> list[Query]:
    """``count`` captions for a scene: about ``positive`` of them name an object's attributes
    (one to four of them), ``random`` are random tokens, the rest name attributes no object has.
    Of the captions that name attributes, ``shape_alone`` more name the shape and nothing else,
    ``pattern_alone`` the pattern (shapes, then patterns, are what the model learns last), and
    ``either`` name two values of one of their attributes, in either order, covering the objects
    with either (a category no single word covers, such as red or yellow things, then has a
    caption of the model's words). With all three 0 nothing extra is drawn from ``rng``, so
    earlier runs' data is kept."""
    values = {"size": SIZES, "pattern": PATTERNS, "colour": tuple(COLOURS), "shape": SHAPES}
    queries = []
    for _ in range(count):
        draw = rng.random()
        if draw < random:
            length = int(rng.integers(RANDOM_LENGTHS[0], RANDOM_LENGTHS[1] + 1))
            queries.append(Query(tuple(int(i) for i in rng.choice(pool, length)), np.zeros(len(things), bool)))
            continue
        alone = rng.random() if shape_alone or pattern_alone else 1.0
        if alone < shape_alone:
            chosen = ["shape"]
        elif alone < shape_alone + pattern_alone:
            chosen = ["pattern"]
        else:
            chosen = [a for a in ATTRIBUTES if rng.random() < 0.4] or [ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]]
        if draw < random + positive and things:
            thing = things[int(rng.integers(len(things)))]
            named: Named = {a: thing.value(a) for a in chosen}
        else:
            for _ in range(20):  # attributes that no object has all of
                named = {a: values[a][int(rng.integers(len(values[a])))] for a in chosen}
                if not matches(things, named).any():
                    break
        if either and rng.random() < either:
            attribute = chosen[int(rng.integers(len(chosen)))]
            others = [v for v in values[attribute] if v != named[attribute]]
            pair = (named[attribute], others[int(rng.integers(len(others)))])
            named[attribute] = pair if rng.random() < 0.5 else pair[::-1]
        queries.append(Query(tuple(tokenizer.encode(caption(named))), matches(things, named)))
    return queries
