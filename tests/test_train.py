"""Training the scene world's tiny SAM3 with sam3's own losses: seeded, resumable to the same
weights, refusing a resume with other settings, and written through the project's writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sam3")
pytest.importorskip("torchmetrics")
pytest.importorskip("scipy")

from mlx_alias.reference.train import CURVE, STATE, TrainConfig, train  # noqa: E402
from mlx_alias.reference.validation import EITHER, object_scores, separation  # noqa: E402

SMALL = TrainConfig(steps=4, batch=2, queries=2, warmup=2, checkpoint_every=2, validate_every=4, validation_scenes=2)


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_training_moves_the_weights_and_resumes_to_the_same_ones(tmp_path):
    from mlx_alias.config import tiny_config
    from mlx_alias.reference.build import build_model

    whole, steps = train(tmp_path / "whole", SMALL)
    assert steps == SMALL.steps
    start = _weights(build_model(tiny_config(), seed=SMALL.seed, device="cpu"))
    trained = _weights(whole)
    assert any(not np.array_equal(start[k], trained[k]) for k in start)

    # stopped after 2 steps (a checkpoint), then resumed in a new call: the same weights, bit for bit
    _, steps = train(tmp_path / "cut", SMALL, until=2)
    assert steps == 2
    with open(tmp_path / "cut" / CURVE, "a") as curve:  # a killed run got past its checkpoint
        curve.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    cut, steps = train(tmp_path / "cut", SMALL)
    assert steps == SMALL.steps
    resumed = _weights(cut)
    assert all(np.array_equal(trained[k], resumed[k]) for k in trained)
    records = [json.loads(line) for line in (tmp_path / "whole" / CURVE).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and {"words_median", "either_median"} <= set(records[-1])
    assert 0 <= records[-1]["separation/violet"] <= 1 or np.isnan(records[-1]["separation/violet"])
    assert all(np.isfinite(r["loss"]) for r in records)
    resumed_records = [json.loads(line) for line in (tmp_path / "cut" / CURVE).read_text().splitlines()]
    assert [r["step"] for r in resumed_records] == [1, 2, 3, 4] and resumed_records[2]["loss"] > 0


def test_a_resume_with_other_settings_is_refused(tmp_path):
    train(tmp_path / "run", TrainConfig(**{**SMALL.__dict__, "steps": 2}))
    with pytest.raises(ValueError, match="other settings \\(steps was 2, now 4\\)"):
        train(tmp_path / "run", SMALL)


def test_a_run_saved_before_a_setting_existed_resumes_at_its_default(tmp_path):
    from mlx_alias.search.state import load_state, save_state

    train(tmp_path / "run", SMALL, until=2)
    state = load_state(tmp_path / "run" / STATE)
    del state["config"]["shape_alone"]  # as a run of a version without it saved its settings
    save_state(tmp_path / "run" / STATE, state)
    assert train(tmp_path / "run", SMALL)[1] == SMALL.steps
    with pytest.raises(ValueError, match="shape_alone was 0.0, now 0.5"):
        train(tmp_path / "run", TrainConfig(**{**SMALL.__dict__, "shape_alone": 0.5}))


def test_object_scores_and_separation():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4, :4] = True
    masks[1, 4:, 4:] = True
    logits = -np.ones((3, 8, 8))
    logits[0, :4, :4] = 1  # object 0 exactly
    logits[1, 4:, 4:6] = 1  # half of object 1: IoU 0.5, not above
    logits[2, :4, :3] = 1  # most of object 0, with a lower score
    np.testing.assert_allclose(object_scores(np.array([0.9, 0.8, 0.7]), logits, masks), [0.9, 0.0])
    assert separation([0.9, 0.8], [0.1]) == 1.0 and separation([0.1], [0.9, 0.8]) == 0.0
    assert separation([0.5], [0.5]) == 0.5 and np.isnan(separation([], [0.2]))


def test_a_warm_start_begins_from_the_other_runs_weights_with_its_own_schedule(tmp_path):
    first, _ = train(tmp_path / "first", SMALL)
    warm = TrainConfig(**{**SMALL.__dict__, "seed": 1, "init_from": str(tmp_path / "first")})
    start, steps = train(tmp_path / "warm", warm, until=0)
    assert steps == 0
    assert all(np.array_equal(v, _weights(first)[k]) for k, v in _weights(start).items())
    _, steps = train(tmp_path / "warm", warm)
    assert steps == SMALL.steps
    with pytest.raises(ValueError, match="holds no training state .* nor a checkpoint"):
        train(tmp_path / "cold", TrainConfig(**{**SMALL.__dict__, "init_from": str(tmp_path / "none")}))


def test_a_warm_start_from_a_checkpoint_takes_its_weights_and_refuses_another_preset(tmp_path):
    """From a half-precision checkpoint in the transformers layout (as the shipped model is):
    this run's weights are the checkpoint's, widened to float32, except what that layout does
    not hold and no text prompt reads (the position table's class slot, the point projections)."""
    import torch

    from mlx_alias.config import tiny_config
    from mlx_alias.reference.build import build_model
    from mlx_alias.reference.checkpoint import save_checkpoint

    first, _ = train(tmp_path / "first", SMALL)
    save_checkpoint(first, tiny_config(), tmp_path / "shipped", "hf", torch.float16)
    warm = TrainConfig(**{**SMALL.__dict__, "seed": 1, "init_from": str(tmp_path / "shipped")})
    start, steps = train(tmp_path / "warm", warm, until=0)
    assert steps == 0
    halved = {
        k: v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v for k, v in _weights(first).items()
    }
    started = _weights(start)
    pos = "backbone.vision_backbone.trunk.pos_embed"
    assert np.array_equal(started[pos][:, 1:], halved[pos][:, 1:])
    unheld = [k for k, v in started.items() if not np.array_equal(v, halved[k])]
    assert unheld and all(k == pos or ".points_" in k for k in unheld)
    other = tiny_config()
    other.text.layers += 1
    save_checkpoint(build_model(other, seed=0, device="cpu"), other, tmp_path / "other", "hf")
    with pytest.raises(ValueError, match="is not of this run's model preset"):
        train(tmp_path / "cold", TrainConfig(**{**SMALL.__dict__, "init_from": str(tmp_path / "other")}))


def test_the_script_writes_a_checkpoint_whose_provenance_holds_the_one_it_started_from(tmp_path):
    """``train_scenes.py --init-from CHECKPOINT``: PROVENANCE.json names the digest of the weights
    it started from and, in turn, how those were made (the chain behind a warm-restarted model)."""
    script = Path(__file__).parents[1] / "scripts" / "train_scenes.py"
    small = ["--steps", "2", "--batch", "2", "--queries", "2", "--warmup", "1", "--validation-scenes", "2"]

    def run(out: str, *more: str) -> dict:
        command = [sys.executable, script, "--out", tmp_path / out, "--checkpoint", tmp_path / f"{out}-model"]
        done = subprocess.run([*command, *small, "--threads", "1", *more], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads((tmp_path / f"{out}-model" / "PROVENANCE.json").read_text())

    first = run("first", "--dtype", "float16")
    second = run("second", "--init-from", str(tmp_path / "first-model"), "--seed", "1")
    assert "init_from" not in first and second["training"]["seed"] == 1
    assert second["init_from"]["provenance"] == first
    assert second["init_from"]["sha256"] == first["model.safetensors"]["sha256"]


def test_validate_scenes_compares_states_and_checkpoints_on_the_same_scenes(tmp_path):
    """A training state and the float32 checkpoint written from it score the same."""
    from mlx_alias.config import tiny_config
    from mlx_alias.reference.checkpoint import save_checkpoint
    from mlx_alias.scenes.concepts import WORDS

    model, _ = train(tmp_path / "run", TrainConfig(**{**SMALL.__dict__, "steps": 2}))
    save_checkpoint(model, tiny_config(), tmp_path / "model", "hf")
    script = Path(__file__).parents[1] / "scripts" / "validate_scenes.py"
    state = tmp_path / "run" / STATE
    done = subprocess.run(
        [sys.executable, script, state, tmp_path / "model", "--seeds", "0", "5", "--scenes", "2", "--threads", "1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    block = 1 + sum(len(w) for w in WORDS.values()) + len(EITHER)  # a head line, the words, the either captions
    assert len(lines) == 2 * block and "(step 2)" in lines[0] and "either of two" in lines[block - 1]
    assert "(checkpoint)" in lines[block] and lines[0].split(": ", 1)[1] == lines[block].split(": ", 1)[1]
    assert lines[1:block] == lines[block + 1 :]
    assert "words median" in lines[0] and "per stream" in lines[0] and "separation" in lines[1]
