"""The driver's rounds: when the phases stop on their own with budget left, fresh random starts
begin another round, until the budget is spent or rounds stop finding better aliases; a run
killed inside a later round resumes to the same end."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mlx_alias.search import driver
from mlx_alias.search.discrete import EvolutionConfig, GcgConfig
from mlx_alias.search.driver import SearchConfig, search_category
from mlx_alias.search.scorer import Scorer
from mlx_alias.search.soft import SoftConfig
from mlx_alias.tokenizer import load_tokenizer

# Evolution that gives up after two generations without gain: each round ends long before
# the budget does.
CONFIG = SearchConfig(
    budget=400,
    random_starts=3,
    phases=("evolution",),
    shares=(1.0,),
    round_patience=2,
    evolution=EvolutionConfig(generations=3, patience=2, population=4),
)


def _run(task, model, state: Path | None, config: SearchConfig = CONFIG):
    return search_category(task, model, load_tokenizer(), config, 2, state)


def test_rounds_continue_until_budget_or_patience(task, search_model):
    spend_all = _run(task, search_model, None, replace(CONFIG, round_patience=10**6))
    assert spend_all.rounds >= 2 and spend_all.evaluations >= CONFIG.budget
    assert [e for e, _ in spend_all.curve] == sorted(e for e, _ in spend_all.curve)
    one_stale_round = _run(task, search_model, None, replace(CONFIG, round_patience=1))
    assert one_stale_round.rounds >= 2 and one_stale_round.evaluations < CONFIG.budget
    # the stale round's evaluations bought nothing: the best came before it
    last_gain = next(e for e, s in one_stale_round.curve if s == one_stale_round.best.score)
    assert last_gain < one_stale_round.evaluations


def test_random_starts_stay_within_the_budget(task, search_model):
    # 40 starts on 2 images would cost 80 evaluations; the budget pays for 15 of them
    outcome = _run(task, search_model, None, replace(CONFIG, budget=30, random_starts=40))
    assert outcome.evaluations == 30 and outcome.rounds == 0


def _killed_then_resumed(task, model, path: Path, monkeypatch, config: SearchConfig, kill_after) -> driver.Outcome:
    """A run killed (KeyboardInterrupt) right after the first checkpoint ``kill_after(state)``
    accepts, then resumed from that checkpoint."""
    original = driver.save_state

    def killed(target, state):
        original(target, state)
        if kill_after(state):
            raise KeyboardInterrupt

    monkeypatch.setattr(driver, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(task, model, path, config)
    monkeypatch.setattr(driver, "save_state", original)
    return _run(task, model, path, config)


def test_kill_in_a_later_round_resumes_to_the_same_end(task, search_model, tmp_path, monkeypatch):
    whole = _run(task, search_model, tmp_path / "whole.safetensors")
    resumed = _killed_then_resumed(
        task, search_model, tmp_path / "cut.safetensors", monkeypatch, CONFIG, lambda state: state["at"]["round"] == 1
    )
    assert (resumed.best, resumed.evaluations, resumed.curve) == (whole.best, whole.evaluations, whole.curve)


def test_concept_phase_composes_and_a_kill_inside_it_resumes(task, search_model, tmp_path, monkeypatch):
    config = replace(
        CONFIG.with_phases(("concept", "evolution")),
        concept=SoftConfig(init="random", steps=6, evaluate_every=2, patience=100),
    )
    phases = []
    whole = search_category(
        task,
        search_model,
        load_tokenizer(),
        config,
        2,
        tmp_path / "whole.safetensors",
        lambda p: phases.append(p.phase),
    )
    # each round: the concept phase's six steps, then evolution from the best of them and the starts
    assert phases[:7] == ["concept"] * 6 + ["evolution"] and set(phases) == {"concept", "evolution"}
    resumed = _killed_then_resumed(
        task,
        search_model,
        tmp_path / "cut.safetensors",
        monkeypatch,
        config,
        lambda state: state["at"]["phase"] == 0 and state["phase"]["taken"] == 3,
    )
    assert (resumed.best, resumed.evaluations, resumed.curve) == (whole.best, whole.evaluations, whole.curve)


class _Payload:
    """What a crafted pickle runs on loading: here, creating a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _damaged_checkpoints(tmp_path: Path, task, search_model) -> dict[str, bytes]:
    from safetensors.numpy import save

    from mlx_alias.search import state as state_module

    good = tmp_path / "good.safetensors"
    _run(task, search_model, good, replace(CONFIG, budget=12))
    data = good.read_bytes()
    payload = pickle.dumps({"version": 3, "seen": _Payload(tmp_path / "ran")})
    bare = state_module.load_state(good)
    del bare["seen"]
    state_module.save_state(tmp_path / "bare.safetensors", bare)
    return {
        "a pickle": payload,
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "foreign": save({"level0": np.zeros((1, 2), np.float32)}, metadata={"format": "mlx_alias.image_features/1"}),
        "missing a key": (tmp_path / "bare.safetensors").read_bytes(),
        "not UTF-8": data.replace(b"seen", b"se\xffn", 1),
    }


def test_a_damaged_or_foreign_checkpoint_is_refused_and_never_run(task, search_model, tmp_path):
    """Checkpoints are JSON and safetensors: a crafted pickle cannot run code, and what is not
    this search's state gets one sentence that names the file and how to go on."""
    for kind, data in _damaged_checkpoints(tmp_path, task, search_model).items():
        path = tmp_path / "state" / "1-2.safetensors"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        with pytest.raises(ValueError) as caught:
            _run(task, search_model, path)
            pytest.fail(f"{kind}: no error")
        message = str(caught.value)
        assert str(path) in message and "delete it to restart the 2-token search of category 1" in message, (
            kind,
            message,
        )
        assert "\n" not in message and not (tmp_path / "ran").exists(), kind


def test_gradient_phases_take_the_temperatures_scaled_to_the_model(task, search_model, monkeypatch):
    """The task's objective leaves the surrogate's temperatures unset: the search scales them
    on its calibration prompts, and every surrogate the soft and GCG phases take uses them."""
    taken = []
    original = Scorer.surrogate

    def recording(self, embeddings, padding, config=None, images=None):
        taken.append(config)
        return original(self, embeddings, padding, config, images)

    monkeypatch.setattr(Scorer, "surrogate", recording)
    config = replace(
        CONFIG.with_phases(("soft", "gcg")),
        budget=40,
        soft=SoftConfig(steps=2, evaluate_every=1),
        gcg=GcgConfig(steps=2, candidates=4),
    )
    outcome = _run(task, search_model, None, config)
    prompts = driver._calibration_prompts(config, task, driver.allowed_tokens(load_tokenizer()), 2)
    expected = task.train.calibrated(driver.ids_of(load_tokenizer(), prompts))
    assert task.train.config.temperature is None and expected.temperature > 0 and expected.mask_temperature > 0
    assert outcome.surrogate == expected
    # soft steps spend no evaluations: the curve gets a point only where it changes
    assert all(a != b for a, b in zip(outcome.curve, outcome.curve[1:]))
    assert len(taken) >= 2 and all(c == expected for c in taken)


def test_search_without_gradient_phases_leaves_the_surrogate_alone(task, search_model, monkeypatch):
    """An evolution-only search (the seed-style baseline's, whose scorer has no surrogate) does
    not ground calibration prompts and records no temperatures."""

    def refuse(self, ids):
        raise AssertionError("calibrated without a gradient phase")

    monkeypatch.setattr(Scorer, "calibrated", refuse)
    outcome = _run(task, search_model, None, replace(CONFIG, budget=40))
    assert outcome.surrogate is None and outcome.evaluations > 0


def test_phases_are_checked():
    assert SearchConfig().with_phases(("soft", "evolution", "gcg")) == SearchConfig()
    for bad in [("soft", "sfot"), (), ("gcg", "gcg")]:
        with pytest.raises(ValueError, match="phases must be distinct names"):
            SearchConfig().with_phases(bad)


def test_search_command_defaults_are_the_configs():
    """`mlx-alias search` imports the driver (and MLX) only when it runs, so its option defaults
    restate ``SearchConfig``'s: they must not drift apart."""
    import inspect

    from mlx_alias.commands.search import command as search

    option = {name: p.default.default for name, p in inspect.signature(search).parameters.items()}
    cfg = SearchConfig()
    assert (option["budget"], option["holdout"], option["seed"], option["batch"]) == (
        cfg.budget,
        cfg.holdout_fraction,
        cfg.seed,
        cfg.pairs_per_batch,
    )
    assert (tuple(option["lengths"]), option["phases"], option["soft_starts"], option["threshold"]) == (
        cfg.lengths,
        ",".join(cfg.phases),
        cfg.soft.starts,
        cfg.objective.threshold,
    )
