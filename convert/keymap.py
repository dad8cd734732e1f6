"""The one weight-key table: official ``sam3.pt`` names <-> transformers ``Sam3Model`` names.

The canonical MLX naming *is* the transformers naming (without ``detector_model.``), so one
table serves three jobs: writing a transformers-layout checkpoint from the reference, reading
one back into it, and converting either layout to MLX. Templates use ``{i}`` for a layer index;
a template ending in "." is a module prefix followed by ``params``.

Special cases are named by ``Kind`` and applied in ``convert/layouts.py``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mlx_alias.config import ModelConfig


class Kind(enum.Enum):
    COPY = "copy"
    FUSED_QKV = "fused_qkv"  # sam3: one [3d, ...] tensor; transformers: q_proj, k_proj, v_proj
    CLS_SLOT = "cls_slot"  # sam3 keeps a never-read cls slot in front of the position grid
    TRANSPOSED = "transposed"  # sam3 stores [in, out]; transformers a Linear weight [out, in]
    CONV = "conv"  # Conv2d [out, in, kh, kw]; MLX wants [out, kh, kw, in]
    CONV_T = "conv_transpose"  # ConvTranspose2d [in, out, kh, kw]; MLX wants [out, kh, kw, in]


@dataclass(frozen=True)
class Rule:
    sam3: str
    hf: str | None  # None: the key is dropped (see ``why``)
    kind: Kind = Kind.COPY
    params: tuple[str, ...] = ("weight", "bias")
    over: str | None = None  # which index range {i} spans (see RANGES)
    mlx: bool = True  # False: kept in the transformers layout, dropped from MLX weights
    why: str = ""


WB = ("weight", "bias")
W = ("weight",)
KEY = ()  # the template is a whole key

RANGES: dict[str, Callable[[ModelConfig], Iterable[int]]] = {
    "vision": lambda c: range(c.vision.depth),
    "text": lambda c: range(c.text.layers),
    "geometry": lambda c: range(c.detector.geometry_layers),
    "encoder": lambda c: range(c.detector.encoder_layers),
    "decoder": lambda c: range(c.detector.decoder_layers),
    "neck": lambda c: range(len(c.detector.neck_scales)),
    "neck_x4": lambda c: [i for i, s in enumerate(c.detector.neck_scales) if s == 4.0],
    "neck_x2": lambda c: [i for i, s in enumerate(c.detector.neck_scales) if s == 2.0],
    "pixel": lambda c: range(c.detector.mask_upsampling_stages),
    "mlp3": lambda c: range(3),
}


def _attention(sam3: str, hf: str, over: str, out: str = "o_proj") -> list[Rule]:
    """nn.MultiheadAttention: fused in_proj in sam3, separate projections in transformers."""
    return [
        Rule(f"{sam3}.in_proj_", f"{hf}.", Kind.FUSED_QKV, over=over),
        Rule(f"{sam3}.out_proj.", f"{hf}.{out}.", over=over),
    ]


def _layer_norms(sam3: str, hf: str, pairs: list[tuple[str, str]], over: str) -> list[Rule]:
    return [Rule(f"{sam3}.{a}.", f"{hf}.{b}.", over=over) for a, b in pairs]


def _mlp(sam3: str, hf: str, layers: int, over: str | None = None) -> list[Rule]:
    """sam3's MLP numbers its Linear layers from 0, transformers' from 1."""
    return [Rule(f"{sam3}.layers.{n}.", f"{hf}.layer{n + 1}.", over=over) for n in range(layers)]


VIT = "backbone.vision_backbone.trunk"
NECK = "backbone.vision_backbone.convs.{i}"
TEXT = "backbone.language_backbone.encoder"
CLIP = "text_encoder.text_model"
GEO = "geometry_encoder"
ENC = "transformer.encoder.layers.{i}"
DEC = "transformer.decoder"
SEG = "segmentation_head"

RULES: tuple[Rule, ...] = (
    # Vision trunk (ViTDet)
    Rule(f"{VIT}.pos_embed", "vision_encoder.backbone.embeddings.position_embeddings", Kind.CLS_SLOT, KEY),
    Rule(f"{VIT}.patch_embed.proj.", "vision_encoder.backbone.embeddings.patch_embeddings.projection.", Kind.CONV, W),
    Rule(f"{VIT}.ln_pre.", "vision_encoder.backbone.layer_norm."),
    Rule(f"{VIT}.blocks.{{i}}.norm1.", "vision_encoder.backbone.layers.{i}.layer_norm1.", over="vision"),
    Rule(f"{VIT}.blocks.{{i}}.norm2.", "vision_encoder.backbone.layers.{i}.layer_norm2.", over="vision"),
    Rule(
        f"{VIT}.blocks.{{i}}.attn.qkv.", "vision_encoder.backbone.layers.{i}.attention.", Kind.FUSED_QKV, over="vision"
    ),
    Rule(f"{VIT}.blocks.{{i}}.attn.proj.", "vision_encoder.backbone.layers.{i}.attention.o_proj.", over="vision"),
    Rule(f"{VIT}.blocks.{{i}}.mlp.fc1.", "vision_encoder.backbone.layers.{i}.mlp.fc1.", over="vision"),
    Rule(f"{VIT}.blocks.{{i}}.mlp.fc2.", "vision_encoder.backbone.layers.{i}.mlp.fc2.", over="vision"),
    Rule(
        f"{VIT}.blocks.{{i}}.attn.freqs_cis",
        None,
        params=KEY,
        over="vision",
        why="complex RoPE table, recomputed from the config",
    ),
    # Neck (simple FPN); scale_layers.1 is the GELU between the two transposed convs
    Rule(f"{NECK}.dconv_2x2_0.", "vision_encoder.neck.fpn_layers.{i}.scale_layers.0.", Kind.CONV_T, over="neck_x4"),
    Rule(f"{NECK}.dconv_2x2_1.", "vision_encoder.neck.fpn_layers.{i}.scale_layers.2.", Kind.CONV_T, over="neck_x4"),
    Rule(f"{NECK}.dconv_2x2.", "vision_encoder.neck.fpn_layers.{i}.scale_layers.0.", Kind.CONV_T, over="neck_x2"),
    Rule(f"{NECK}.conv_1x1.", "vision_encoder.neck.fpn_layers.{i}.proj1.", Kind.CONV, over="neck"),
    Rule(f"{NECK}.conv_3x3.", "vision_encoder.neck.fpn_layers.{i}.proj2.", Kind.CONV, over="neck"),
    # Text encoder (CLIP-style, causal) and the 1024 -> d_model resizer
    Rule(f"{TEXT}.token_embedding.", f"{CLIP}.embeddings.token_embedding.", params=W),
    Rule(f"{TEXT}.positional_embedding", f"{CLIP}.embeddings.position_embedding.weight", params=KEY),
    Rule(f"{TEXT}.ln_final.", f"{CLIP}.final_layer_norm."),
    Rule(
        f"{TEXT}.text_projection",
        "text_encoder.text_projection.weight",
        Kind.TRANSPOSED,
        KEY,
        mlx=False,
        why="CLIP's pooled-output projection; SAM3 discards its result",
    ),
    *_attention(
        f"{TEXT}.transformer.resblocks.{{i}}.attn", f"{CLIP}.encoder.layers.{{i}}.self_attn", "text", "out_proj"
    ),
    *_layer_norms(
        f"{TEXT}.transformer.resblocks.{{i}}",
        f"{CLIP}.encoder.layers.{{i}}",
        [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")],
        "text",
    ),
    Rule("backbone.language_backbone.resizer.", "text_projection."),
    # Geometry encoder (runs for text prompts too: its cls token joins the prompt)
    *_attention(f"{GEO}.encode.{{i}}.self_attn", f"{GEO}.layers.{{i}}.self_attn", "geometry"),
    *_attention(f"{GEO}.encode.{{i}}.cross_attn_image", f"{GEO}.layers.{{i}}.cross_attn", "geometry"),
    *_layer_norms(
        f"{GEO}.encode.{{i}}",
        f"{GEO}.layers.{{i}}",
        [
            ("linear1", "mlp.fc1"),
            ("linear2", "mlp.fc2"),
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("norm3", "layer_norm3"),
        ],
        "geometry",
    ),
    Rule(f"{GEO}.img_pre_norm.", f"{GEO}.vision_layer_norm."),
    Rule(f"{GEO}.norm.", f"{GEO}.prompt_layer_norm."),
    Rule(f"{GEO}.encode_norm.", f"{GEO}.output_layer_norm."),
    Rule(f"{GEO}.cls_embed.", f"{GEO}.cls_embed.", params=W),
    Rule(f"{GEO}.label_embed.", f"{GEO}.label_embed.", params=W),
    Rule(f"{GEO}.final_proj.", f"{GEO}.final_proj."),
    Rule(f"{GEO}.boxes_direct_project.", f"{GEO}.boxes_direct_project."),
    Rule(f"{GEO}.boxes_pool_project.", f"{GEO}.boxes_pool_project.", Kind.CONV),
    Rule(f"{GEO}.boxes_pos_enc_project.", f"{GEO}.boxes_pos_enc_project."),
    *(
        Rule(
            f"{GEO}.points_{part}_project.",
            None,
            why="point-prompt projections: the text-prompted path never reads them (the transformers layout omits them too)",
        )
        for part in ("direct", "pool", "pos_enc")
    ),
    # Fusion encoder
    *_attention(f"{ENC}.self_attn", "detr_encoder.layers.{i}.self_attn", "encoder"),
    *_attention(f"{ENC}.cross_attn_image", "detr_encoder.layers.{i}.cross_attn", "encoder"),
    *_layer_norms(
        ENC,
        "detr_encoder.layers.{i}",
        [
            ("linear1", "mlp.fc1"),
            ("linear2", "mlp.fc2"),
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("norm3", "layer_norm3"),
        ],
        "encoder",
    ),
    # Decoder
    Rule(f"{DEC}.query_embed.", "detr_decoder.query_embed.", params=W),
    Rule(f"{DEC}.reference_points.", "detr_decoder.reference_points.", params=W),
    Rule(f"{DEC}.presence_token.", "detr_decoder.presence_token.", params=W),
    Rule(f"{DEC}.presence_token_out_norm.", "detr_decoder.presence_layer_norm."),
    Rule(f"{DEC}.norm.", "detr_decoder.output_layer_norm."),
    *_mlp(f"{DEC}.presence_token_head", "detr_decoder.presence_head", 3),
    *_mlp(f"{DEC}.bbox_embed", "detr_decoder.box_head", 3),
    *_mlp(f"{DEC}.ref_point_head", "detr_decoder.ref_point_head", 2),
    *_mlp(f"{DEC}.boxRPB_embed_x", "detr_decoder.box_rpb_embed_x", 2),
    *_mlp(f"{DEC}.boxRPB_embed_y", "detr_decoder.box_rpb_embed_y", 2),
    *_attention(f"{DEC}.layers.{{i}}.self_attn", "detr_decoder.layers.{i}.self_attn", "decoder"),
    *_attention(f"{DEC}.layers.{{i}}.ca_text", "detr_decoder.layers.{i}.text_cross_attn", "decoder"),
    *_attention(f"{DEC}.layers.{{i}}.cross_attn", "detr_decoder.layers.{i}.vision_cross_attn", "decoder"),
    *_layer_norms(
        f"{DEC}.layers.{{i}}",
        "detr_decoder.layers.{i}",
        [
            ("linear1", "mlp.fc1"),
            ("linear2", "mlp.fc2"),
            ("norm1", "vision_cross_attn_layer_norm"),
            ("catext_norm", "text_cross_attn_layer_norm"),
            ("norm2", "self_attn_layer_norm"),
            ("norm3", "mlp_layer_norm"),
        ],
        "decoder",
    ),
    # Dot-product scoring
    *_mlp("dot_prod_scoring.prompt_mlp", "dot_product_scoring.text_mlp", 2),
    Rule("dot_prod_scoring.prompt_mlp.out_norm.", "dot_product_scoring.text_mlp_out_norm."),
    Rule("dot_prod_scoring.prompt_proj.", "dot_product_scoring.text_proj."),
    Rule("dot_prod_scoring.hs_proj.", "dot_product_scoring.query_proj."),
    # Segmentation head
    Rule(
        f"{SEG}.pixel_decoder.conv_layers.{{i}}.",
        "mask_decoder.pixel_decoder.conv_layers.{i}.",
        Kind.CONV,
        over="pixel",
    ),
    Rule(f"{SEG}.pixel_decoder.norms.{{i}}.", "mask_decoder.pixel_decoder.norms.{i}.", over="pixel"),
    Rule(f"{SEG}.mask_predictor.mask_embed.layers.{{i}}.", "mask_decoder.mask_embedder.layers.{i}.", over="mlp3"),
    Rule(f"{SEG}.instance_seg_head.", "mask_decoder.instance_projection.", Kind.CONV),
    Rule(f"{SEG}.semantic_seg_head.", "mask_decoder.semantic_projection.", Kind.CONV),
    *_attention(f"{SEG}.cross_attend_prompt", "mask_decoder.prompt_cross_attn", None),
    Rule(f"{SEG}.cross_attn_norm.", "mask_decoder.prompt_cross_attn_norm."),
)

QKV = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class Match:
    rule: Rule
    index: str | None  # the {i} value, if the template has one
    param: str | None  # "weight"/"bias" for prefix templates


def _pattern(template: str, params: tuple[str, ...], between: str = "") -> re.Pattern[str]:
    """A template as a regex; ``between`` is raw regex placed before the parameter name."""
    body = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
    if params:
        return re.compile(f"^{body}{between}(?P<p>{'|'.join(params)})$")
    return re.compile(f"^{body}$")


_SAM3_PATTERNS = [(r, _pattern(r.sam3, r.params)) for r in RULES]


def match_sam3(key: str) -> Match | None:
    found = [(r, m) for r, p in _SAM3_PATTERNS if (m := p.match(key))]
    if len(found) > 1:  # a table error, not a user error
        raise AssertionError(f"key {key} matches {len(found)} rules")
    if not found:
        return None
    rule, m = found[0]
    return Match(rule, m.groupdict().get("i"), m.groupdict().get("p"))


def fill(template: str, index: str | None) -> str:
    return template.replace("{i}", index) if index is not None else template


def hf_keys_of(match: Match) -> list[str]:
    """The transformers-layout key(s) one official key becomes (three for fused q/k/v)."""
    rule = match.rule
    assert rule.hf is not None
    base = fill(rule.hf, match.index)
    if rule.kind is Kind.FUSED_QKV:
        return [f"{base}{name}.{match.param}" for name in QKV]
    return [base + (match.param or "")]


def expected_sam3_keys(cfg: ModelConfig) -> list[str]:
    """Every key an official checkpoint of this config holds (the tracker aside)."""
    keys = []
    for rule in RULES:
        indices = [str(i) for i in RANGES[rule.over](cfg)] if rule.over else [None]
        for index in indices:
            base = fill(rule.sam3, index)
            keys.extend([base + p for p in rule.params] if rule.params else [base])
    return keys
