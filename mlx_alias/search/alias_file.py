"""``aliases.json``: a search's aliases with everything needed to re-score and apply them.

An object: ``format``; ``weights`` (``sha256``, ``path``) and ``dataset`` (``path``,
``annotations_sha256``, ``images_sha256``, ``images``) as the run found them (paths relative
to the file's folder when they lay beside the run); ``objective`` (its ``threshold`` is what
``segment`` and ``evaluate`` use for these aliases unless told otherwise); ``holdout_fraction``
and ``seed``; ``aliases``, one entry per searched category (``category_id``, ``name``,
``tokens``, ``text``, ``roundtrip``, ``train_score``, ``holdout_score``, ``baseline``,
``evaluations``, ``split``, ``curve``, ``lengths``); ``skipped``, the categories left out
and why. Files written before the format was versioned (a bare list of entries) are read too;
they carry no threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlx_alias.tokenizer import Tokenizer

ALIASES_FORMAT = "mlx-alias.aliases/2"


@dataclass(frozen=True)
class AliasFile:
    path: Path
    aliases: list[dict]
    threshold: float | None  # None in an unversioned file
    negative_penalty: float | None  # the objective's weight of false positives; None likewise
    weights_sha256: str | None
    annotations_sha256: str | None

    def entry(self, category_id: int | None) -> dict:
        """The alias of a category (``None``: the file's only one)."""
        if category_id is None:
            if len(self.aliases) != 1:
                ids = ", ".join(str(e["category_id"]) for e in self.aliases)
                raise ValueError(f"{self.path} holds the aliases of categories {ids}: pass --category to choose one")
            return self.aliases[0]
        for entry in self.aliases:
            if entry["category_id"] == category_id:
                return entry
        raise ValueError(f"{self.path} holds no alias for category {category_id}")


def alias_document(settings: dict, entries: list[dict], skipped: list[dict]) -> dict:
    """The file's contents, from a run's settings (``run.json``'s) and its finished entries."""
    search = settings["search"]
    return {"format": ALIASES_FORMAT, "weights": settings["weights"], "dataset": settings["dataset"],
            "objective": search["objective"], "holdout_fraction": search["holdout_fraction"], "seed": search["seed"],
            "aliases": entries, "skipped": skipped}


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
    if isinstance(data, list):
        entries, threshold, penalty, weights, dataset = data, None, None, None, None
    elif isinstance(data, dict) and data.get("format") == ALIASES_FORMAT:
        entries, objective = data.get("aliases"), data.get("objective")
        threshold = objective.get("threshold") if isinstance(objective, dict) else None
        if not _number(threshold) or not 0 <= threshold <= 1:
            raise ValueError(f"the alias file {path} records no threshold between 0 and 1")
        penalty = objective.get("negative_penalty")
        if not _number(penalty) or penalty < 0:
            raise ValueError(f"the alias file {path} records no valid negative_penalty")
        weights = (data.get("weights") or {}).get("sha256")
        dataset = (data.get("dataset") or {}).get("annotations_sha256")
    else:
        raise ValueError(f"the alias file {path} is not an mlx-alias alias file (no format {ALIASES_FORMAT!r})")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "category_id" in e and "tokens" in e
                                                for e in entries):
        raise ValueError(f"the alias file {path} is not a list of entries with category_id and tokens")
    for e in entries:
        try:
            tokenizer.from_content_ids(e["tokens"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the alias of category {e['category_id']} in {path} does not fit the vocabulary: {exc}") from exc
    return AliasFile(path, entries, threshold, penalty, weights, dataset)
