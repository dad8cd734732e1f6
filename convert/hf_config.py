"""``ModelConfig`` <-> the transformers ``Sam3Config`` JSON that travels with a checkpoint.

Only architecture sizes are read. Layer-norm epsilons are not: transformers' defaults (1e-6)
differ from the official model's (1e-5, torch's default), and the official model is what we
port, so ours always follow sam3. A ``config.json`` we write sets them to sam3's values so
that transformers' ``Sam3Model`` reproduces the official outputs.
"""

from __future__ import annotations

from typing import Any

from mlx_alias.config import DetectorConfig, ModelConfig, TextConfig, VisionConfig


class ConfigError(ValueError):
    """A config.json that does not describe a SAM3 image model."""


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
    v, t, d = cfg.vision, cfg.text, cfg.detector
    grid = v.grid
    layer = {
        "hidden_size": d.d_model,
        "num_attention_heads": d.heads,
        "intermediate_size": d.ffn_dim,
        "layer_norm_eps": d.layer_norm_eps,
    }
    return {
        "model_type": "sam3",
        "architectures": ["Sam3Model"],
        "vision_config": {
            "model_type": "sam3_vision_model",
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": v.width,
                "intermediate_size": v.mlp_hidden,
                "num_hidden_layers": v.depth,
                "num_attention_heads": v.heads,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "window_size": v.window_size,
                "global_attn_indexes": list(v.global_blocks),
                "pretrain_image_size": v.pretrain_image_size,
                "layer_norm_eps": v.layer_norm_eps,
                "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
            },
            "fpn_hidden_size": d.d_model,
            "scale_factors": list(d.neck_scales),
            "backbone_feature_sizes": [[int(grid * s)] * 2 for s in d.neck_scales[: len(d.neck_scales) - d.neck_scalp]],
            "layer_norm_eps": v.layer_norm_eps,
        },
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "projection_dim": 512,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": "gelu",
            "layer_norm_eps": t.layer_norm_eps,
        },
        "geometry_encoder_config": {**layer, "num_layers": d.geometry_layers},
        "detr_encoder_config": {**layer, "num_layers": d.encoder_layers},
        "detr_decoder_config": {**layer, "num_layers": d.decoder_layers, "num_queries": d.num_queries},
        "mask_decoder_config": {
            "hidden_size": d.d_model,
            "num_attention_heads": d.heads,
            "num_upsampling_stages": d.mask_upsampling_stages,
            "layer_norm_eps": d.layer_norm_eps,
        },
    }


def from_hf(data: dict[str, Any]) -> ModelConfig:
    """Sizes from a transformers SAM3 config (image model, or a video model's detector)."""
    data = data.get("detector_config", data)
    if data.get("model_type") not in ("sam3", None) or "vision_config" not in data:
        raise ConfigError("config.json is not a SAM3 model config (no sam3 vision_config)")
    defaults = ModelConfig()
    try:
        vision = data["vision_config"]
        vit = vision.get("backbone_config", {})
        text = data.get("text_config", {})
        geometry = data.get("geometry_encoder_config", {})
        encoder = data.get("detr_encoder_config", {})
        decoder = data.get("detr_decoder_config", {})
        masks = data.get("mask_decoder_config", {})
        width = vit.get("hidden_size", defaults.vision.width)
        text_width = text.get("hidden_size", defaults.text.width)
        ffn = {c.get("intermediate_size", defaults.detector.ffn_dim) for c in (geometry, encoder, decoder)}
        if len(ffn) != 1:
            raise ConfigError("config.json gives the encoders different feed-forward sizes, which SAM3 does not have")
        rope = vit.get("rope_parameters") or {}
        return ModelConfig(
            vision=VisionConfig(
                image_size=vit.get("image_size", defaults.vision.image_size),
                pretrain_image_size=vit.get("pretrain_image_size", defaults.vision.pretrain_image_size),
                patch_size=vit.get("patch_size", defaults.vision.patch_size),
                width=width,
                depth=vit.get("num_hidden_layers", defaults.vision.depth),
                heads=vit.get("num_attention_heads", defaults.vision.heads),
                mlp_ratio=vit.get("intermediate_size", defaults.vision.mlp_hidden) / width,
                window_size=vit.get("window_size", defaults.vision.window_size),
                global_blocks=tuple(vit.get("global_attn_indexes", defaults.vision.global_blocks)),
                rope_theta=rope.get("rope_theta", defaults.vision.rope_theta),
            ),
            text=TextConfig(
                vocab_size=text.get("vocab_size", defaults.text.vocab_size),
                context_length=text.get("max_position_embeddings", defaults.text.context_length),
                width=text_width,
                heads=text.get("num_attention_heads", defaults.text.heads),
                layers=text.get("num_hidden_layers", defaults.text.layers),
                mlp_ratio=text.get("intermediate_size", int(text_width * defaults.text.mlp_ratio)) / text_width,
            ),
            detector=DetectorConfig(
                d_model=vision.get("fpn_hidden_size", defaults.detector.d_model),
                heads=encoder.get("num_attention_heads", defaults.detector.heads),
                ffn_dim=ffn.pop(),
                neck_scales=tuple(float(s) for s in vision.get("scale_factors", defaults.detector.neck_scales)),
                geometry_layers=geometry.get("num_layers", defaults.detector.geometry_layers),
                encoder_layers=encoder.get("num_layers", defaults.detector.encoder_layers),
                decoder_layers=decoder.get("num_layers", defaults.detector.decoder_layers),
                num_queries=decoder.get("num_queries", defaults.detector.num_queries),
                mask_upsampling_stages=masks.get("num_upsampling_stages", defaults.detector.mask_upsampling_stages),
            ),
        )
    except (TypeError, AttributeError, ZeroDivisionError) as exc:
        raise ConfigError(f"config.json has a malformed SAM3 section ({exc})") from exc
