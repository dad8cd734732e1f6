"""Architecture sizes of the SAM3 image model, as plain dataclasses read from / written to
``config.json``. The same config drives the MLX model and the PyTorch reference builder.

Defaults are SAM3's released sizes (sam3 0.1.4 ``model_builder``). Sizes that tensor shapes
cannot tell (head counts, which ViT blocks are global, the window size) travel in this file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_VERSION = 1


@dataclass
class VisionConfig:
    image_size: int = 1008
    pretrain_image_size: int = 336  # the absolute position embedding's grid (plus a cls slot)
    patch_size: int = 14
    width: int = 1024
    depth: int = 32
    heads: int = 16
    mlp_ratio: float = 4.625
    window_size: int = 24
    global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 32
    width: int = 1024
    heads: int = 16
    layers: int = 24
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5


@dataclass
class DetectorConfig:
    """Everything after the backbones: neck width, geometry/fusion encoders, decoder, heads."""

    d_model: int = 256
    heads: int = 8
    ffn_dim: int = 2048
    neck_scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    neck_scalp: int = 1  # lowest-resolution neck levels discarded
    geometry_layers: int = 3
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_queries: int = 200
    mask_upsampling_stages: int = 3
    layer_norm_eps: float = 1e-5


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"config_version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        sections = {"vision": VisionConfig, "text": TextConfig, "detector": DetectorConfig}
        unknown = set(data) - set(sections) - {"config_version"}
        if unknown:
            raise ValueError(f"config has unknown sections: {sorted(unknown)}")
        parts = {}
        for name, section in sections.items():
            values = dict(data.get(name, {}))
            known = {f.name for f in dataclasses.fields(section)}
            extra = set(values) - known
            if extra:
                raise ValueError(f"config section '{name}' has unknown keys: {sorted(extra)}")
            for f in dataclasses.fields(section):
                if f.name in values and isinstance(values[f.name], list):
                    values[f.name] = tuple(values[f.name])
            parts[name] = section(**values)
        return cls(**parts)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def tiny_config() -> ModelConfig:
    """A few-million-parameter SAM3 of the same architecture, for tests and quick searches on a
    laptop CPU: 224 px images (16x16 tokens), 4 ViT blocks of width 64, a 2-layer text encoder,
    a detector of width 64 (4 heads) with one fusion-encoder layer, two decoder layers and 20
    queries (at width 256 the pixel decoder's convolutions made one evaluation 8x slower). The vocabulary stays the real
    49,408 tokens so that aliases are real BPE sequences."""
    return ModelConfig(
        vision=VisionConfig(
            image_size=224,
            pretrain_image_size=112,
            width=64,
            depth=4,
            heads=4,
            window_size=8,
            global_blocks=(1, 3),
        ),
        text=TextConfig(width=64, heads=4, layers=2),
        detector=DetectorConfig(
            d_model=64,
            heads=4,
            ffn_dim=256,
            geometry_layers=1,
            encoder_layers=1,
            decoder_layers=2,
            num_queries=20,
        ),
    )


PRESETS = {"tiny": tiny_config, "full": ModelConfig}
