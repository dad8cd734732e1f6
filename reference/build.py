"""Build the official sam3 image model (text-prompted path) at any size from ``ModelConfig``.

This mirrors ``sam3.model_builder.build_sam3_image_model`` part for part, with the sizes taken
from the config instead of hard-coded, and without its CUDA-only construction: the sine
position encoding and the decoder's box-RPB coordinates are not precomputed on "cuda" (sam3
computes the same values lazily on the model's device). The tracker/instance-interactivity
parts are not built: the text-prompted path never reads them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlx_alias.config import ModelConfig

from . import compat
from .compat import pick_device

# isort: split
from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer  # noqa: E402
from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer  # noqa: E402
from sam3.model.geometry_encoders import SequenceGeometryEncoder  # noqa: E402
from sam3.model.maskformer_segmentation import (  # noqa: E402
    PixelDecoder,
    UniversalSegmentationHead,
)
from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper  # noqa: E402
from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention  # noqa: E402
from sam3.model.necks import Sam3DualViTDetNeck  # noqa: E402
from sam3.model.position_encoding import PositionEmbeddingSine  # noqa: E402
from sam3.model.sam3_image import Sam3Image  # noqa: E402
from sam3.model.text_encoder_ve import VETextEncoder  # noqa: E402
from sam3.model.tokenizer_ve import SimpleTokenizer  # noqa: E402
from sam3.model.vitdet import ViT  # noqa: E402
from sam3.model.vl_combiner import SAM3VLBackbone  # noqa: E402

from mlx_alias.tokenizer import DEFAULT_VOCAB  # noqa: E402

assert compat  # imported first for its side effect: sam3 importable without triton


def _position_encoding(d_model: int) -> PositionEmbeddingSine:
    return PositionEmbeddingSine(num_pos_feats=d_model, normalize=True, scale=None, temperature=10000)


def _attention(cfg: ModelConfig, dropout: float = 0.1, batch_first: bool = False) -> nn.Module:
    det = cfg.detector
    return MultiheadAttention(num_heads=det.heads, dropout=dropout, embed_dim=det.d_model, batch_first=batch_first)


def _encoder_layer(
    cfg: ModelConfig, *, pos_at_attn: bool, pos_at_cross_keys: bool, batch_first: bool
) -> TransformerEncoderLayer:
    det = cfg.detector
    return TransformerEncoderLayer(
        activation="relu",
        d_model=det.d_model,
        dim_feedforward=det.ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=pos_at_attn,
        pos_enc_at_cross_attn_keys=pos_at_cross_keys,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_attention(cfg, batch_first=batch_first),
        cross_attention=_attention(cfg, batch_first=batch_first),
    )


def _vision(cfg: ModelConfig) -> Sam3DualViTDetNeck:
    v = cfg.vision
    trunk = ViT(
        img_size=v.image_size,
        pretrain_img_size=v.pretrain_image_size,
        patch_size=v.patch_size,
        embed_dim=v.width,
        depth=v.depth,
        num_heads=v.heads,
        mlp_ratio=v.mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=tuple(v.global_blocks),
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=v.window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    return Sam3DualViTDetNeck(
        position_encoding=_position_encoding(cfg.detector.d_model),
        d_model=cfg.detector.d_model,
        scale_factors=list(cfg.detector.neck_scales),
        trunk=trunk,
        add_sam2_neck=False,
    )


def _text(cfg: ModelConfig) -> VETextEncoder:
    t = cfg.text
    return VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=str(DEFAULT_VOCAB)),
        d_model=cfg.detector.d_model,
        width=t.width,
        heads=t.heads,
        layers=t.layers,
        context_length=t.context_length,
        vocab_size=t.vocab_size,
    )


def _transformer(cfg: ModelConfig) -> TransformerWrapper:
    det = cfg.detector
    encoder = TransformerEncoderFusion(
        layer=_encoder_layer(cfg, pos_at_attn=True, pos_at_cross_keys=False, batch_first=True),
        num_layers=det.encoder_layers,
        d_model=det.d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder_layer = TransformerDecoderLayer(
        activation="relu",
        d_model=det.d_model,
        dim_feedforward=det.ffn_dim,
        dropout=0.1,
        cross_attention=_attention(cfg),
        n_heads=det.heads,
        use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=decoder_layer,
        num_layers=det.decoder_layers,
        num_queries=det.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=det.d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        use_act_checkpoint=True,
        presence_token=True,
    )
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=det.d_model)


def _scoring(cfg: ModelConfig) -> DotProductScoring:
    det = cfg.detector
    prompt_mlp = MLP(
        input_dim=det.d_model,
        hidden_dim=det.ffn_dim,
        output_dim=det.d_model,
        num_layers=2,
        dropout=0.1,
        residual=True,
        out_norm=nn.LayerNorm(det.d_model),
    )
    return DotProductScoring(d_model=det.d_model, d_proj=det.d_model, prompt_mlp=prompt_mlp)


def _segmentation_head(cfg: ModelConfig) -> UniversalSegmentationHead:
    det = cfg.detector
    pixel_decoder = PixelDecoder(
        num_upsampling_stages=det.mask_upsampling_stages,
        interpolation_mode="nearest",
        hidden_dim=det.d_model,
    )
    return UniversalSegmentationHead(
        hidden_dim=det.d_model,
        upsampling_stages=det.mask_upsampling_stages,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=_attention(cfg, dropout=0),
        pixel_decoder=pixel_decoder,
    )


def _geometry_encoder(cfg: ModelConfig) -> SequenceGeometryEncoder:
    det = cfg.detector
    return SequenceGeometryEncoder(
        pos_enc=_position_encoding(det.d_model),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=det.d_model,
        num_layers=det.geometry_layers,
        layer=_encoder_layer(cfg, pos_at_attn=False, pos_at_cross_keys=True, batch_first=False),
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )


def _initialise_empty_parameters(model: Sam3Image, cfg: ModelConfig) -> None:
    """sam3 leaves these as ``torch.empty`` (the checkpoint fills them); a random-init model
    would compute NaN without them. CLIP's own initialisation is used."""
    text = model.backbone.language_backbone.encoder
    nn.init.normal_(text.positional_embedding, std=0.01)
    nn.init.normal_(text.text_projection, std=cfg.text.width**-0.5)


def build_model(cfg: ModelConfig, *, seed: int | None = 0, device: str | None = None) -> Sam3Image:
    """The official sam3 image model at ``cfg``'s sizes, in eval mode, on ``device`` (CUDA,
    then MPS, then CPU when not given). With ``seed`` every parameter gets seeded random
    values; pass ``seed=None`` when weights are loaded right after."""
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = Sam3Image(
            backbone=SAM3VLBackbone(visual=_vision(cfg), text=_text(cfg), scalp=cfg.detector.neck_scalp),
            transformer=_transformer(cfg),
            input_geometry_encoder=_geometry_encoder(cfg),
            segmentation_head=_segmentation_head(cfg),
            num_feature_levels=1,
            o2m_mask_predict=True,
            dot_prod_scoring=_scoring(cfg),
            use_instance_query=False,
            multimask_output=True,
            inst_interactive_predictor=None,
            matcher=None,
        )
        _initialise_empty_parameters(model, cfg)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(pick_device(device)).eval()


def perturb_constant_parameters(model: nn.Module, seed: int, scale: float = 0.2) -> int:
    """Add seeded noise to every parameter that initialisation left constant (LayerNorm
    weights 1 and biases 0, zero attention biases, zero-initialised last layers). A parity
    test on such weights could not see a swapped norm or bias; after this it can. Returns how
    many tensors changed."""
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for param in model.parameters():
            flat = param.detach().flatten()
            if flat.numel() and bool((flat == flat[0]).all()):
                noise = torch.randn(param.shape, generator=generator) * scale
                param.add_(noise.to(param.device, param.dtype))
                changed += 1
    return changed


TINY_SCORE_GAIN = 2.5


def sharpen_scores(model: nn.Module, gain: float = TINY_SCORE_GAIN) -> None:
    """Scale the dot-product scoring's two projections by ``gain`` (logits by gain^2).

    At random init every query logit sits near 0, so every official score sits near 0.3 and
    no prompt ever predicts an instance at sam3's 0.5 threshold: a search on such a model
    has nothing to find. The tiny preset applies gain 2.5, after which scores spread over about
    0.15-0.6 with a few queries per prompt and image above 0.5 (gain 2 left almost none, gain 3
    most)."""
    scoring = model.dot_prod_scoring
    with torch.no_grad():
        scoring.prompt_proj.weight.mul_(gain)
        scoring.hs_proj.weight.mul_(gain)


TINY_VOCABULARY_RANK = 4


def structure_vocabulary(model: nn.Module, seed: int, rank: int = TINY_VOCABULARY_RANK) -> None:
    """Replace the token embedding table by a seeded random table of rank ``rank`` with the
    same per-coordinate scale (1, as ``nn.Embedding`` initialises it).

    A trained vocabulary has neighbourhoods: many tokens mean nearly the same thing, and an
    alias one token off still half works. A plain random table has none: every one of the
    49,408 tokens is about as far from every other, so a planted prompt is an isolated needle
    that no search can find (``benchmarks/landscape.py``: one-token neighbours of the planted
    prompt score no better than random aliases). At rank 4 the tokens fill a 4-dimensional
    space densely, so that nearby tokens act alike, while random prompts stay far from a
    planted one."""
    table = model.backbone.language_backbone.encoder.token_embedding.weight
    generator = torch.Generator().manual_seed(seed)
    coordinates = torch.randn(table.shape[0], rank, generator=generator)
    directions = torch.randn(rank, table.shape[1], generator=generator) / rank**0.5
    with torch.no_grad():
        table.copy_((coordinates @ directions).to(table.device, table.dtype))


def shape_tiny(model: nn.Module, seed: int) -> None:
    """The tiny preset's two departures from plain random init, so that a search on it has
    something to find: scores that cross the threshold, and a vocabulary with neighbourhoods."""
    sharpen_scores(model)
    structure_vocabulary(model, seed)


def parameter_count(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
