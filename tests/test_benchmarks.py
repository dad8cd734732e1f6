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
    # the sweep screens the whole vocabulary whatever the budget (about a minute here): its
    # budget is checked below, the phase itself in test_sweep.py
    methods = [m for m in search_quality.METHODS if "sweep" not in m]
    rows = search_quality.run(0, "red kite", budget, 12, methods, test_images=6)
    assert [r["method"] for r in rows] == methods
    for row in rows:
        # a phase step may finish past the budget by less than one candidate's images
        assert 0 < row["evaluations"] <= budget + 12, row
        assert row["planted_holdout"] > 0 and row["relative_holdout"] is not None, row
        assert 0 <= row["holdout_false_positive_rate"] <= 1 and 0 <= row["holdout_quality"] <= 1, row
        assert row["test_images"] == 6 and row["planted_test"] > 0, row
        assert row["relative_test"] == row["test"] / row["planted_test"], row
        assert 0 <= row["test_false_positive_rate"] <= 1 and 0 <= row["test_quality"] <= 1, row
    assert "median test / planted" in search_quality.table(rows, methods)


def test_the_sweep_method_gets_its_cost_on_top_of_the_budget():
    """1 screen image (the sweep's default) of the 49,405 allowed tokens, then the 64 kept tokens
    and the 56 pairs on all 8 training images."""
    from types import SimpleNamespace

    import numpy as np

    from mlx_alias.search.driver import SearchConfig
    from mlx_alias.tokenizer import load_tokenizer

    search_quality = _benchmark("search_quality")
    targets = [SimpleNamespace(masks=np.zeros((n, 4, 4))) for n in (1, 2, 0, 1, 0, 3, 0, 0)]
    task = SimpleNamespace(train=SimpleNamespace(targets=targets, images=8))
    cfg = SearchConfig(budget=6000)
    assert search_quality.sweep_budget(cfg, task, load_tokenizer(), 2) == 6000 + 49405 + (64 + 56) * 8
    assert search_quality.sweep_budget(cfg, task, load_tokenizer(), 1) == 6000 + 49405 + 64 * 8


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
