"""A search's results as typed objects, and ``aliases.json``, which is written from them and
stands alone: it holds everything needed to re-score and apply each alias.

The file is an object: ``format``; ``weights`` (``sha256``, ``path``) and ``dataset``
(``path``, ``annotations_sha256``, ``images_sha256``, ``images``) as the run found them (paths
relative to the file's folder when they lay beside the run); ``objective`` (its ``threshold``
is what ``segment`` and ``evaluate`` use for these aliases unless told otherwise);
``holdout_fraction`` and ``seed``; ``aliases``, one ``Alias`` per searched category; and
``skipped``, the categories left out and why.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_alias.data.split import Split
from mlx_alias.tokenizer import Tokenizer

from .objective import ObjectiveConfig

ALIASES_FORMAT = "mlx-alias.aliases/2"


@dataclass(frozen=True)
class LabelScore:
    """The natural label (the category's name) scored as a prompt."""

    text: str
    train_score: float
    holdout_score: float | None


@dataclass(frozen=True)
class LengthBest:
    """The best alias of one searched length."""

    length: int
    tokens: tuple[int, ...]
    text: str
    train_score: float
    evaluations: int
    surrogate_temperatures: dict[str, float] | None  # {"score", "mask"}; None without gradient phases


@dataclass(frozen=True)
class Alias:
    """A category's alias: its tokens (apply by these), its text (``roundtrip``: whether the
    text re-tokenizes to the same tokens), its scores, and how the search got there."""

    category_id: int
    tokens: tuple[int, ...]
    name: str | None = None
    text: str = ""
    roundtrip: bool = False
    train_score: float | None = None
    holdout_score: float | None = None
    baseline: LabelScore | None = None
    evaluations: int = 0
    split: Split | None = None
    curve: tuple[tuple[int, float], ...] = ()  # (evaluations spent, best train score so far)
    lengths: tuple[LengthBest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = {
            "category_id": self.category_id,
            "name": self.name,
            "tokens": list(self.tokens),
            "text": self.text,
            "roundtrip": self.roundtrip,
            "train_score": self.train_score,
            "holdout_score": self.holdout_score,
            "evaluations": self.evaluations,
            "split": None if self.split is None else dataclasses.asdict(self.split),
            "curve": [list(point) for point in self.curve],
            "lengths": [{**dataclasses.asdict(b), "tokens": list(b.tokens)} for b in self.lengths],
        }
        if self.baseline is not None:
            out["baseline"] = dataclasses.asdict(self.baseline)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alias:
        """An entry as ``to_json`` writes it; only ``category_id`` and ``tokens`` are required."""
        split, base = data.get("split"), data.get("baseline")
        return cls(
            category_id=data["category_id"],
            tokens=tuple(data["tokens"]),
            name=data.get("name"),
            text=data.get("text", ""),
            roundtrip=bool(data.get("roundtrip", False)),
            train_score=data.get("train_score"),
            holdout_score=data.get("holdout_score"),
            baseline=None if base is None else LabelScore(**base),
            evaluations=int(data.get("evaluations", 0)),
            split=None if split is None else Split(**split),
            curve=tuple((int(e), float(s)) for e, s in data.get("curve", [])),
            lengths=tuple(LengthBest(**{**b, "tokens": tuple(b["tokens"])}) for b in data.get("lengths", [])),
        )


@dataclass(frozen=True)
class Skipped:
    category_id: int
    name: str | None
    reason: str


@dataclass
class SearchResult:
    """What a search run found, as ``aliases.json`` holds it."""

    aliases: list[Alias]
    skipped: list[Skipped] = field(default_factory=list)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    holdout_fraction: float = 0.25
    seed: int = 0
    weights: dict[str, Any] = field(default_factory=dict)  # sha256, path
    dataset: dict[str, Any] = field(default_factory=dict)  # path, annotations_sha256, images_sha256, images

    def alias(self, category_id: int | None = None) -> Alias:
        """The alias of a category (``None``: the only one)."""
        if category_id is None:
            if len(self.aliases) != 1:
                ids = ", ".join(str(a.category_id) for a in self.aliases)
                raise ValueError(f"the results hold the aliases of categories {ids}: choose one")
            return self.aliases[0]
        for alias in self.aliases:
            if alias.category_id == category_id:
                return alias
        raise ValueError(f"the results hold no alias for category {category_id}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ALIASES_FORMAT,
            "weights": self.weights,
            "dataset": self.dataset,
            "objective": dataclasses.asdict(self.objective),
            "holdout_fraction": self.holdout_fraction,
            "seed": self.seed,
            "aliases": [a.to_json() for a in self.aliases],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResult:
        return cls(
            aliases=[Alias.from_json(a) for a in data["aliases"]],
            skipped=[Skipped(**s) for s in data.get("skipped", [])],
            objective=ObjectiveConfig(**data["objective"]),
            holdout_fraction=data["holdout_fraction"],
            seed=data["seed"],
            weights=data.get("weights", {}),
            dataset=data.get("dataset", {}),
        )


@dataclass(frozen=True)
class AliasFile:
    """An alias file as read back: its results, where it lay, and whether it said its objective
    (a bare list of entries, as written before the format was versioned, does not)."""

    path: Path
    result: SearchResult
    versioned: bool

    @property
    def threshold(self) -> float | None:
        return self.result.objective.threshold if self.versioned else None

    def entry(self, category_id: int | None) -> Alias:
        try:
            return self.result.alias(category_id)
        except ValueError as exc:
            hint = ": pass --category to choose one" if category_id is None else ""
            raise ValueError(f"{self.path}: {exc}{hint}") from None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_alias_file(path: Path, tokenizer: Tokenizer) -> AliasFile:
    """Read and check an alias file; every problem is one sentence naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the alias file {path} ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ValueError(f"the alias file {path} is not JSON{where}") from exc
    versioned = isinstance(data, dict) and data.get("format") == ALIASES_FORMAT
    if not versioned and not isinstance(data, list):
        raise ValueError(f"the alias file {path} is not an mlx-alias alias file (no format {ALIASES_FORMAT!r})")
    entries = data.get("aliases") if versioned else data
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "category_id" in e and "tokens" in e for e in entries
    ):
        raise ValueError(f"the alias file {path} is not a list of entries with category_id and tokens")
    for e in entries:
        try:
            tokenizer.from_content_ids(e["tokens"])
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"the alias of category {e['category_id']} in {path} does not fit the vocabulary: {exc}"
            ) from exc
    if not versioned:
        return AliasFile(path, SearchResult([Alias.from_json(e) for e in entries]), False)
    objective = data.get("objective")
    threshold = objective.get("threshold") if isinstance(objective, dict) else None
    if not _number(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"the alias file {path} records no threshold between 0 and 1")
    penalty = objective.get("negative_penalty")
    if not _number(penalty) or penalty < 0:
        raise ValueError(f"the alias file {path} records no valid negative_penalty")
    try:
        return AliasFile(path, SearchResult.from_json(data), True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the alias file {path} is damaged ({exc})") from exc
