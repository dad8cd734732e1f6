"""The reference forward passes that parity tests and ``evaluate --backend torch`` use.

One flow, as in the MLX model: images -> cached image features; token ids or input embeddings
-> text features; (image features, text features) -> grounding outputs for a batch of prompts.
Everything stays differentiable: callers choose ``torch.no_grad()`` where they want it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .compat import pinned_memory_optional

# isort: split
from sam3.model.data_misc import FindStage  # noqa: E402


@dataclass
class ReferenceText:
    memory: torch.Tensor  # [B, L, d_model] after the resizer
    padding: torch.Tensor  # [B, L] bool, True where the position is padding (sam3's convention)


def image_features(model: torch.nn.Module, images: torch.Tensor) -> dict:
    """sam3's backbone output for preprocessed images [B, 3, H, W] (see ``mlx_alias.image``)."""
    return model.backbone.forward_image(images.to(next(model.parameters()).device))


def _text_encoder(model: torch.nn.Module):
    return model.backbone.language_backbone


def text_features_from_ids(model: torch.nn.Module, ids: torch.Tensor) -> ReferenceText:
    """Features for token ids [B, L] (start, content, end, zero padding), through sam3's own
    ``TextTransformer.forward``; the padding mask is sam3's ``ids == 0``."""
    encoder = _text_encoder(model)
    ids = ids.to(next(model.parameters()).device).long()
    _, tokens = encoder.encoder(ids)
    return ReferenceText(memory=encoder.resizer(tokens), padding=ids == 0)


def text_features_from_embeddings(
    model: torch.nn.Module, embeddings: torch.Tensor, padding: torch.Tensor
) -> ReferenceText:
    """Features for input embeddings [B, L, width] (soft prompts): the same computation as
    ``TextTransformer.forward`` after its token lookup, which sam3 has no entry point for."""
    encoder = _text_encoder(model)
    clip = encoder.encoder
    length = embeddings.shape[1]
    x = embeddings + clip.positional_embedding[:length]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    return ReferenceText(memory=encoder.resizer(x), padding=padding.to(x.device).bool())


def token_embeddings(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    encoder = _text_encoder(model).encoder
    return encoder.token_embedding(ids.to(encoder.token_embedding.weight.device).long())


def grounding_outputs(
    model: torch.nn.Module,
    features: dict,
    text: ReferenceText,
    image_index: torch.Tensor | None = None,
    find_target: object = None,
) -> dict:
    """sam3's own grounding output dict for B prompts: prompt b against image
    ``image_index[b]`` (all against image 0 when not given). ``find_target`` (sam3's
    ``BatchedFindTarget`` fields) is read only when the model is in training mode, which
    matches the outputs to it (``Sam3Image._compute_matching``)."""
    batch = text.memory.shape[0]
    device = text.memory.device
    if image_index is None:
        image_index = torch.zeros(batch, dtype=torch.long)
    backbone_out = {
        **features,
        "language_features": text.memory.transpose(0, 1),  # sam3 keeps text sequence-first
        "language_mask": text.padding,
    }
    find = FindStage(
        img_ids=image_index.to(device).long(),
        text_ids=torch.arange(batch, device=device),
        input_boxes=None,
        input_boxes_mask=None,
        input_boxes_label=None,
        input_points=None,
        input_points_mask=None,
    )
    with pinned_memory_optional():
        return model.forward_grounding(
            backbone_out=backbone_out,
            find_input=find,
            find_target=find_target,
            geometric_prompt=model._get_dummy_prompt(num_prompts=batch),
        )


def ground(
    model: torch.nn.Module, features: dict, text: ReferenceText, image_index: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Grounding outputs for B prompts: prompt b against image ``image_index[b]`` (all against
    image 0 when not given). Returns ``pred_logits`` [B, Q, 1], ``presence_logit_dec`` [B, 1],
    ``pred_boxes`` [B, Q, 4] (cxcywh, normalised), ``pred_masks`` [B, Q, h, w] and ``scores``
    [B, Q], the official ``sigmoid(logit) * sigmoid(presence)``."""
    out = grounding_outputs(model, features, text, image_index)
    logits = out["pred_logits"]
    presence = out["presence_logit_dec"]
    return {
        "pred_logits": logits,
        "presence_logit_dec": presence,
        "pred_boxes": out["pred_boxes"],
        "pred_masks": out["pred_masks"],
        "scores": logits.sigmoid().squeeze(-1) * presence.sigmoid(),
    }
