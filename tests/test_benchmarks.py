"""The search-quality benchmark runs every method end to end on a planted world (a small
budget: this checks that each method searches and reports, not how well)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _search_quality():
    spec = importlib.util.spec_from_file_location("search_quality", BENCHMARKS / "search_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_searches_a_planted_world():
    search_quality = _search_quality()
    budget = 40
    rows = search_quality.run(0, "red kite", budget, 12, list(search_quality.METHODS))
    assert [r["method"] for r in rows] == list(search_quality.METHODS)
    for row in rows:
        # a phase step may finish past the budget by less than one candidate's images
        assert 0 < row["evaluations"] <= budget + 12, row
        assert row["planted_holdout"] > 0 and row["relative_holdout"] is not None, row
