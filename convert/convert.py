"""``mlx-alias convert``: a SAM3 checkpoint (either layout) -> an MLX weights folder.

The folder holds ``model.safetensors`` (canonical names, channels-last convolutions, the
requested dtype), ``config.json`` (every architecture size) and the tokenizer vocabulary.
Both source layouts pass through the transformers layout, so the same weights give the same
bytes whichever layout they came in.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlx_alias.config import ModelConfig
from mlx_alias.files import atomic_directory, check_target
from mlx_alias.model.weights import CONFIG, WEIGHTS
from mlx_alias.progress import tracked
from mlx_alias.tokenizer import DEFAULT_VOCAB

from .keymap import expected_sam3_keys, hf_keys_of, match_sam3
from .layouts import LayoutError, hf_to_mlx, key_listing, sam3_to_hf
from .sources import SAM3, Checkpoint, CheckpointError, open_checkpoint

DTYPES = ("float32", "bfloat16", "float16")
VOCAB = DEFAULT_VOCAB.name


@dataclass
class ConversionReport:
    source: Path
    layout: str
    config_source: str
    tensors: int
    parameters: int
    dtype: str
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why
    ignored: dict[str, int] = field(default_factory=dict)  # prefix -> count

    def summary(self) -> list[str]:
        lines = [
            f"read {self.source} ({self.layout} layout); sizes from {self.config_source}",
            f"wrote {self.tensors} tensors, {self.parameters:,} parameters, {self.dtype}",
        ]
        lines += [f"skipped {n} '{prefix}*' keys (not part of the image model)" for prefix, n in self.ignored.items()]
        reasons: dict[str, int] = {}
        for why in self.dropped.values():
            reasons[why] = reasons.get(why, 0) + 1
        lines += [f"dropped {n} tensors: {why}" for why, n in sorted(reasons.items())]
        return lines


def expected_hf_keys(cfg: ModelConfig) -> set[str]:
    keys: set[str] = set()
    for key in expected_sam3_keys(cfg):
        match = match_sam3(key)
        assert match is not None
        if match.rule.hf is not None:
            keys.update(hf_keys_of(match))
    return keys


def _check_complete(present: set[str], expected: set[str], what: str) -> None:
    missing = sorted(expected - present)
    if missing:
        raise LayoutError(f"the checkpoint lacks {len(missing)} {what} weights: {key_listing(missing)}")
    extra = sorted(present - expected)
    if extra:
        raise LayoutError(
            f"the checkpoint has {len(extra)} weights that its config does not account for "
            f"(wrong config.json?): {key_listing(extra)}"
        )


def _defining_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes that pin down every size a tensor can show; heads and windows cannot be seen."""
    v, t, d = cfg.vision, cfg.text, cfg.detector
    grid = (v.pretrain_image_size // v.patch_size) ** 2
    return {
        "vision_encoder.backbone.embeddings.patch_embeddings.projection.weight": (
            v.width,
            3,
            v.patch_size,
            v.patch_size,
        ),
        "vision_encoder.backbone.embeddings.position_embeddings": (1, grid, v.width),
        "vision_encoder.backbone.layers.0.mlp.fc1.weight": (v.mlp_hidden, v.width),
        "text_encoder.text_model.embeddings.token_embedding.weight": (t.vocab_size, t.width),
        "text_encoder.text_model.embeddings.position_embedding.weight": (t.context_length, t.width),
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight": (int(t.width * t.mlp_ratio), t.width),
        "text_projection.weight": (d.d_model, t.width),
        "detr_encoder.layers.0.mlp.fc1.weight": (d.ffn_dim, d.d_model),
        "detr_decoder.query_embed.weight": (d.num_queries, d.d_model),
    }


def _check_shapes(hf: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], config_source: str) -> None:
    for key, value in hf.items():
        if key in expected and tuple(value.shape) != expected[key]:
            raise LayoutError(f"{key} has shape {tuple(value.shape)} but {config_source} implies {expected[key]}")


def _check_keys(checkpoint: Checkpoint) -> None:
    cfg = checkpoint.config
    if checkpoint.layout == SAM3:
        _check_complete(set(checkpoint.tensors), set(expected_sam3_keys(cfg)), "official-layout")
    else:
        _check_complete(set(checkpoint.tensors), expected_hf_keys(cfg), "transformers-layout")


def convert(source: Path, out_dir: Path, dtype: str = "float32", *, overwrite: bool = False) -> ConversionReport:
    """Convert tensor by tensor, so that at most one source tensor sits in memory beside the
    MLX arrays being written."""
    import mlx.core as mx

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    check_target(Path(out_dir), overwrite=overwrite)
    checkpoint = open_checkpoint(source)
    _check_keys(checkpoint)
    shapes = _defining_shapes(checkpoint.config)
    target = getattr(mx, dtype)
    arrays: dict[str, mx.array] = {}
    dropped: dict[str, str] = {}
    loaders = checkpoint.tensors
    for key in tracked(sorted(loaders), len(loaders), "converting weights"):
        hf, dropped_here = (
            sam3_to_hf({key: loaders[key]()}) if checkpoint.layout == SAM3 else ({key: loaders[key]()}, {})
        )
        _check_shapes(hf, shapes, checkpoint.config_source)
        weights, dropped_mlx = hf_to_mlx(hf)
        dropped.update(dropped_here)
        dropped.update(dropped_mlx)
        for name, value in weights.items():
            arrays[name] = mx.array(value).astype(target)
            mx.eval(arrays[name])  # let the numpy source go now
    with atomic_directory(Path(out_dir), overwrite=overwrite) as staging:
        mx.save_safetensors(str(staging / WEIGHTS), dict(sorted(arrays.items())), metadata={"format": "mlx"})
        (staging / CONFIG).write_text(checkpoint.config.to_json())
        shutil.copyfile(DEFAULT_VOCAB, staging / VOCAB)
    return ConversionReport(
        source=checkpoint.path,
        layout=checkpoint.layout,
        config_source=checkpoint.config_source,
        tensors=len(arrays),
        parameters=sum(int(np.prod(a.shape)) for a in arrays.values()),
        dtype=dtype,
        dropped=dropped,
        ignored=checkpoint.ignored,
    )


__all__ = ["convert", "ConversionReport", "CheckpointError", "LayoutError", "DTYPES"]
