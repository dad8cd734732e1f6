"""Strict loading of converted MLX weights: every problem is named before anything runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_alias.model.weights import WeightsError, load_model

KEY = "vision_encoder.backbone.layers.0.attention.q_proj.weight"


def _variant(mlx_weights: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "weights"
    shutil.copytree(mlx_weights, out)
    weights = mx.load(str(out / "model.safetensors"))
    edit(weights)
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    return out


def test_converted_weights_load(mlx_weights):
    assert load_model(mlx_weights).cfg.vision.depth == 4


def test_missing_tensor_is_named(mlx_weights, tmp_path):
    folder = _variant(mlx_weights, tmp_path, lambda w: w.pop(KEY))
    with pytest.raises(
        WeightsError, match=r"1 missing \(vision_encoder\.backbone\.layers\.0\.attention\.q_proj\.weight\)"
    ):
        load_model(folder)


def test_unexpected_tensor_is_named(mlx_weights, tmp_path):
    folder = _variant(mlx_weights, tmp_path, lambda w: w.update({"text_encoder.extra.weight": mx.zeros(3)}))
    with pytest.raises(WeightsError, match=r"1 unexpected \(text_encoder\.extra\.weight\)"):
        load_model(folder)


def test_misshaped_tensor_is_named(mlx_weights, tmp_path):
    folder = _variant(mlx_weights, tmp_path, lambda w: w.update({KEY: mx.zeros((3, 3))}))
    with pytest.raises(WeightsError, match=r"1 mis-shaped \(.*q_proj\.weight \(3, 3\) != \(64, 64\)\)"):
        load_model(folder)


def test_truncated_file(mlx_weights, tmp_path):
    out = tmp_path / "weights"
    shutil.copytree(mlx_weights, out)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or not safetensors"):
        load_model(out)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file(mlx_weights, tmp_path, name):
    out = tmp_path / "weights"
    shutil.copytree(mlx_weights, out)
    (out / name).unlink()
    with pytest.raises(WeightsError, match=f"not an mlx-alias weights folder: {name} is missing"):
        load_model(out)


def test_config_that_does_not_fit(mlx_weights, tmp_path):
    out = tmp_path / "weights"
    shutil.copytree(mlx_weights, out)
    text = (out / "config.json").read_text().replace('"depth": 4', '"depth": 5')
    (out / "config.json").write_text(text)
    with pytest.raises(WeightsError, match=r"missing \(vision_encoder\.backbone\.layers\.4\."):
        load_model(out)
