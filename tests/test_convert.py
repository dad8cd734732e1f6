"""``mlx-alias convert`` and ``init``: round trips from both layouts, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from typer.testing import CliRunner

from mlx_alias.cli import app
from mlx_alias.config import ModelConfig
from mlx_alias.convert.convert import convert
from mlx_alias.convert.keymap import expected_sam3_keys
from mlx_alias.convert.sources import open_checkpoint

torch = pytest.importorskip("torch")

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args))


def _assert_clean_failure(result, phrase: str) -> None:
    assert result.exit_code != 0
    output = result.output.strip()
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and output.endswith(errors[0]), output  # progress lines may precede
    assert phrase in errors[0], output


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    for fmt, folder in checkpoints.items():
        result = run_cli("convert", str(folder), str(root / fmt))
        assert result.exit_code == 0, result.output
    return {fmt: root / fmt for fmt in checkpoints}


def test_both_layouts_convert_to_identical_bytes(converted):
    for name in ("model.safetensors", "config.json", "bpe_simple_vocab_16e6.txt.gz"):
        assert (converted["sam3"] / name).read_bytes() == (converted["hf"] / name).read_bytes(), name


def test_every_tensor_is_accounted_for(checkpoints, converted, reference_model, tiny_cfg):
    state = {k: v.detach().numpy() for k, v in reference_model.state_dict().items()}
    weights = mx.load(str(converted["sam3"] / "model.safetensors"))
    report = convert(checkpoints["sam3"], converted["sam3"].parent / "again")
    # every official tensor is either written (q/k/v split in three) or dropped with a reason
    written_sources = {
        k for k in state if not k.endswith("freqs_cis") and ".points_" not in k and not k.endswith("text_projection")
    }
    fused = sum(1 for k in written_sources if ".in_proj_" in k or ".attn.qkv." in k)
    assert len(weights) == len(written_sources) + 2 * fused == report.tensors
    dropped = {k.split("[")[0] for k in report.dropped}
    assert "text_encoder.text_projection.weight" in dropped  # named in the transformers layout
    official = dropped - {"text_encoder.text_projection.weight"} | {
        "backbone.language_backbone.encoder.text_projection"
    }
    assert official | written_sources == set(state)
    assert ModelConfig.load(converted["sam3"] / "config.json") == tiny_cfg


def test_values_follow_the_layout_rules(converted, reference_model):
    state = reference_model.state_dict()
    weights = {k: np.array(v) for k, v in mx.load(str(converted["hf"] / "model.safetensors")).items()}
    vit = "backbone.vision_backbone.trunk"
    width = state[f"{vit}.patch_embed.proj.weight"].shape[0]
    qkv = state[f"{vit}.blocks.0.attn.qkv.weight"].numpy()
    np.testing.assert_array_equal(
        weights["vision_encoder.backbone.layers.0.attention.k_proj.weight"], qkv[width : 2 * width]
    )
    np.testing.assert_array_equal(  # Conv2d [O, I, kh, kw] -> [O, kh, kw, I]
        weights["vision_encoder.backbone.embeddings.patch_embeddings.projection.weight"],
        state[f"{vit}.patch_embed.proj.weight"].numpy().transpose(0, 2, 3, 1),
    )
    np.testing.assert_array_equal(  # ConvTranspose2d [I, O, kh, kw] -> [O, kh, kw, I]
        weights["vision_encoder.neck.fpn_layers.0.scale_layers.2.weight"],
        state["backbone.vision_backbone.convs.0.dconv_2x2_1.weight"].numpy().transpose(1, 2, 3, 0),
    )
    np.testing.assert_array_equal(  # the never-read cls slot is dropped
        weights["vision_encoder.backbone.embeddings.position_embeddings"], state[f"{vit}.pos_embed"].numpy()[:, 1:]
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision(checkpoints, tmp_path, dtype):
    convert(checkpoints["hf"], tmp_path / "out", dtype)
    weights = mx.load(str(tmp_path / "out" / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {getattr(mx, dtype)}


def test_hub_style_inputs(checkpoints, reference_model, tmp_path):
    """A wrapped {"model": ...} sam3.pt with tracker keys, and a folder holding both files."""
    state = torch.load(checkpoints["sam3"] / "sam3.pt", weights_only=True)
    state["tracker.maskmem_backbone.weight"] = torch.zeros(2)
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.save({"model": state}, hub / "sam3.pt")
    shutil.copy(checkpoints["sam3"] / "config.json", hub / "config.json")
    checkpoint = open_checkpoint(hub / "sam3.pt")
    assert checkpoint.ignored == {"tracker.": 1}
    report = convert(hub / "sam3.pt", tmp_path / "from_wrapped")
    assert report.ignored == {"tracker.": 1}
    shutil.copy(checkpoints["hf"] / "model.safetensors", hub / "model.safetensors")
    convert(hub, tmp_path / "from_folder")  # prefers model.safetensors
    assert (tmp_path / "from_wrapped" / "model.safetensors").read_bytes() == (
        tmp_path / "from_folder" / "model.safetensors"
    ).read_bytes()


def test_safetensors_path_needs_no_torch(checkpoints, tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from mlx_alias.convert.convert import convert\n"
        f"convert({str(checkpoints['hf'])!r}, {str(tmp_path / 'out')!r})\n"
        "print('torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_full_size_config_without_config_json_is_sam3s():
    assert expected_sam3_keys(ModelConfig())  # the defaults describe the released model


# --- bad input: one sentence, non-zero exit, nothing left behind ------------------------


def _left_behind(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_truncated_checkpoints(checkpoints, tmp_path):
    for name in ("sam3.pt", "model.safetensors"):
        source = next(p for p in checkpoints.values() if (p / name).exists()) / name
        broken = tmp_path / name
        data = source.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
        result = run_cli("convert", str(broken), str(tmp_path / "out"))
        _assert_clean_failure(result, "not a readable")
        assert not (tmp_path / "out").exists()
        assert _left_behind(tmp_path) == [name]
        broken.unlink()


def test_wrong_file_types(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    _assert_clean_failure(run_cli("convert", str(text), str(tmp_path / "out")), "not a readable PyTorch checkpoint")
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n")
    _assert_clean_failure(run_cli("convert", str(image), str(tmp_path / "out")), "neither a .pt nor a .safetensors")
    _assert_clean_failure(run_cli("convert", str(tmp_path / "absent.pt"), str(tmp_path / "out")), "does not exist")
    _assert_clean_failure(
        run_cli("convert", str(tmp_path), str(tmp_path / "out")), "neither model.safetensors nor sam3.pt"
    )
    assert not (tmp_path / "out").exists()


def test_missing_keys_are_listed(checkpoints, tmp_path):
    state = torch.load(checkpoints["sam3"] / "sam3.pt", weights_only=True)
    del state["detector.transformer.decoder.query_embed.weight"]
    del state["detector.backbone.vision_backbone.trunk.ln_pre.bias"]
    folder = tmp_path / "partial"
    folder.mkdir()
    torch.save(state, folder / "sam3.pt")
    shutil.copy(checkpoints["sam3"] / "config.json", folder)
    result = run_cli("convert", str(folder), str(tmp_path / "out"))
    _assert_clean_failure(result, "lacks 2 official-layout weights")
    assert "transformer.decoder.query_embed.weight" in result.output
    assert "backbone.vision_backbone.trunk.ln_pre.bias" in result.output
    assert not (tmp_path / "out").exists()


def test_config_that_does_not_fit_the_weights(checkpoints, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(checkpoints["hf"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["detr_decoder_config"]["num_queries"] = 30
    (folder / "config.json").write_text(json.dumps(config))
    _assert_clean_failure(run_cli("convert", str(folder), str(tmp_path / "out")), "query_embed.weight has shape")
    (folder / "config.json").unlink()  # no config: SAM3's full sizes, which these are not
    _assert_clean_failure(run_cli("convert", str(folder), str(tmp_path / "out")), "lacks")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_dir_as_user(checkpoints, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    _assert_clean_failure(run_cli("convert", str(checkpoints["hf"]), str(locked / "out")), "cannot write")


def test_unwritable_out_dir(checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _assert_clean_failure(run_cli("convert", str(checkpoints["hf"]), str(blocker / "out")), "cannot write into")
    assert _left_behind(tmp_path) == ["file"]


def test_existing_out_dir_is_left_alone(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    _assert_clean_failure(run_cli("convert", str(checkpoints["hf"]), str(out)), "already exists")
    assert _left_behind(out) == ["mine.txt"]
    assert run_cli("convert", str(checkpoints["hf"]), str(out), "--overwrite").exit_code == 0
    assert _left_behind(out) == ["bpe_simple_vocab_16e6.txt.gz", "config.json", "model.safetensors"]
    assert _left_behind(tmp_path) == ["out"]


def test_bad_flags():
    result = run_cli("convert", "a", "b", "--dtype", "float8")
    assert result.exit_code == 2 and "float8" in result.output


def test_init_writes_both_layouts(tmp_path):
    for fmt, name in (("sam3", "sam3.pt"), ("hf", "model.safetensors")):
        result = run_cli("init", "--preset", "tiny", "--seed", "1", "--format", fmt, "--out", str(tmp_path / fmt))
        assert result.exit_code == 0, result.output
        assert _left_behind(tmp_path / fmt) == sorted(["config.json", name])
    result = run_cli("init", "--preset", "tiny", "--out", str(tmp_path / "hf"))
    _assert_clean_failure(result, "already exists")
