"""The benchmarks run end to end on a planted world: the search-quality benchmark every method
(a small budget: this checks that each method searches and reports, not how well), the
landscape its every probe (a few aliases each)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_searches_a_planted_world():
    search_quality = _benchmark("search_quality")
    budget = 40
    rows = search_quality.run(0, "red kite", budget, 12, list(search_quality.METHODS), test_images=6)
    assert [r["method"] for r in rows] == list(search_quality.METHODS)
    for row in rows:
        # a phase step may finish past the budget by less than one candidate's images
        assert 0 < row["evaluations"] <= budget + 12, row
        assert row["planted_holdout"] > 0 and row["relative_holdout"] is not None, row
        assert 0 <= row["holdout_false_positive_rate"] <= 1 and 0 <= row["holdout_quality"] <= 1, row
        assert row["test_images"] == 6 and row["planted_test"] > 0, row
        assert row["relative_test"] == row["test"] / row["planted_test"], row
        assert 0 <= row["test_false_positive_rate"] <= 1 and 0 <= row["test_quality"] <= 1, row
    assert "median test / planted" in search_quality.table(rows, list(search_quality.METHODS))


def test_the_landscape_probes_a_planted_world(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # landscape.py imports its worlds from search_quality.py
    landscape = _benchmark("landscape")
    row = landscape.measure(0, "red kite", 12, randoms=8, neighbours=1, fillers=1, ascents=1)
    assert row["ascended"] >= 1 and 0 < row["planted"] <= 1
    assert len(row["fidelity"]) == len(landscape.TEMPERATURES)
    for fidelity in row["fidelity"].values():
        assert -1 <= fidelity["rank_correlation"] <= 1
        assert 0 <= fidelity["misleading"] <= 8 + 2 + row["ascended"]
    assert "misleading" in landscape.show(row)
