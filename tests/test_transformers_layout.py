"""The transformers-layout checkpoint that the reference path writes is right.

Two claims, on a tiny SAM3 (``tiny_config``) in fp32 on the CPU:

1. ``model.safetensors`` + ``config.json`` load *strictly* into transformers' ``Sam3Model``:
   every key used, none missing or unexpected, every shape equal, every norm's epsilon sam3's.
2. That transformers model computes the official sam3 model's outputs (logits, presence logit,
   boxes, masks) on the same images and prompts; and the same file read back into the official
   model (``load_reference``, transformers -> sam3 through the same key table) is the original.

The weights are seeded random weights *with every parameter perturbed*: a fresh model has all
LayerNorms at (1, 0), all attention and MLP biases at 0 and the box head's last layer at 0, so a
table that swapped two norms or two biases, or lost the box head, would still give identical
outputs. After the perturbation every tensor is distinct and every output depends on the input.

One genuine difference between the two implementations (not a checkpoint matter): sam3 always
runs its geometry encoder, which appends a learned cls token to every prompt (an empty box list
still gives [32 text tokens, 1 cls token]); transformers' ``Sam3Model.forward`` runs the geometry
encoder only when ``input_boxes`` is given, so a text-only call conditions on the 32 text tokens
alone and gives different numbers (measured below). Passing one *padding* box (label -10, masked
out everywhere) makes transformers append the same cls token and reproduces sam3 to float
rounding; the parity tests do that, and ``test_text_only_call_differs_by_the_geometry_cls_token``
pins the difference.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")  # transformers' Sam3Model requires it (roi_align)

import mlx_alias.reference.compat  # noqa: E402, F401  (stubs triton before anything imports sam3)

# isort: split
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from sam3.model.data_misc import FindStage  # noqa: E402
from sam3.model.geometry_encoders import Prompt  # noqa: E402
from transformers import Sam3Config, Sam3Model  # noqa: E402
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput  # noqa: E402

from mlx_alias.config import tiny_config  # noqa: E402
from mlx_alias.reference import runners  # noqa: E402
from mlx_alias.reference.build import build_model  # noqa: E402
from mlx_alias.reference.checkpoint import load_reference, save_checkpoint  # noqa: E402
from mlx_alias.reference.compat import pinned_memory_optional  # noqa: E402
from mlx_alias.tokenizer import Tokenizer  # noqa: E402

PREFIX = "detector_model."
PROMPTS = ["a red car", "dog", "a person riding a bicycle"]
IMAGE_INDEX = [0, 1, 1]  # prompt b is grounded in image IMAGE_INDEX[b]
PADDING_BOX_LABEL = -10  # transformers' label for a padding box (masked out)

# fp32, identical weights: the two implementations differ only in op order (fused vs split
# q/k/v projections, SDPA vs nn.MultiheadAttention, batch- vs sequence-first layouts), so
# outputs agree to float rounding. Measured max|diff| / max(1, max|sam3 output|), text prompts:
# logits 2.1e-6, presence 1.5e-6, boxes 4e-7, masks 2.8e-6 (5.7e-5 abs on masks of magnitude
# 20); with box prompts: 2.8e-6, 4.2e-6, 5e-7, 3.6e-6; FPN features 7e-7; text features exactly
# 0. The bound leaves >20x headroom and is >100x below what one wrong tensor gives (measured:
# swapping layer_norm1/layer_norm2 weights of the one fusion-encoder layer moves the boxes by
# 1.3e-2 and the logits by 3.6e-2; the text-only call's missing cls token moves boxes by 0.15).
RTOL = 1e-4


def _assert_near(name: str, ours: torch.Tensor, theirs: torch.Tensor, rtol: float = RTOL) -> None:
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    scale = max(1.0, ours.abs().max().item())
    diff = (ours - theirs).abs().max().item()
    assert diff <= rtol * scale, f"{name}: max |diff| {diff:.3g} > {rtol:g} x {scale:.3g}"


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


@pytest.fixture(scope="module")
def reference():
    """The official model at tiny sizes, seeded, with every parameter perturbed (see above)."""
    model = build_model(tiny_config(), seed=0, device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def checkpoint_dir(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_checkpoint")
    save_checkpoint(reference, tiny_config(), out, fmt="hf")
    return out


@pytest.fixture(scope="module")
def file_state(checkpoint_dir) -> dict[str, torch.Tensor]:
    return load_file(checkpoint_dir / "model.safetensors")


@pytest.fixture(scope="module")
def hf_model(checkpoint_dir, file_state):
    config = Sam3Config(**json.loads((checkpoint_dir / "config.json").read_text()))
    model = Sam3Model(config).eval()
    state = {key.removeprefix(PREFIX): value for key, value in file_state.items()}
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def inputs():
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids = torch.from_numpy(Tokenizer()(PROMPTS)).long()
    return images, ids, torch.tensor(IMAGE_INDEX)


@pytest.fixture(scope="module")
def reference_out(reference, inputs):
    images, ids, image_index = inputs
    with torch.no_grad():
        features = runners.image_features(reference, images)
        text = runners.text_features_from_ids(reference, ids)
        outputs = runners.ground(reference, features, text, image_index)
    return features, text, outputs


@pytest.fixture(scope="module")
def hf_vision(hf_model, inputs):
    with torch.no_grad():
        return hf_model.get_vision_features(pixel_values=inputs[0])


def _hf_ground(model, vision, ids, image_index, boxes=None, labels=None, *, cls_token=True):
    """transformers' forward for prompt b against image ``image_index[b]``. The attention mask
    is sam3's padding rule inverted (1 where id != 0). With ``cls_token`` and no boxes, one
    padding box makes transformers run the geometry encoder, whose cls token sam3 always adds."""
    batch = ids.shape[0]
    if boxes is None and cls_token:
        boxes = torch.zeros(batch, 1, 4)
        labels = torch.full((batch, 1), PADDING_BOX_LABEL)
    per_prompt = Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(level[image_index] for level in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(level[image_index] for level in vision.fpn_position_encoding),
    )
    with torch.no_grad():
        return model(
            vision_embeds=per_prompt,
            input_ids=ids,
            attention_mask=(ids != 0).long(),
            input_boxes=boxes,
            input_boxes_labels=labels,
        )


def _compare_outputs(sam3_out: dict, hf_out) -> None:
    _assert_near("pred_logits", sam3_out["pred_logits"].squeeze(-1), hf_out.pred_logits)
    _assert_near("presence logit", sam3_out["presence_logit_dec"], hf_out.presence_logits)
    # sam3 returns cxcywh boxes, transformers xyxy (both normalised)
    _assert_near("pred_boxes", _cxcywh_to_xyxy(sam3_out["pred_boxes"]), hf_out.pred_boxes)
    _assert_near("pred_masks", sam3_out["pred_masks"], hf_out.pred_masks)


# --- 1. the file loads strictly into transformers' Sam3Model ---------------------------------


def test_checkpoint_loads_strictly_into_transformers(checkpoint_dir, file_state):
    assert all(key.startswith(PREFIX) for key in file_state)
    state = {key.removeprefix(PREFIX): value for key, value in file_state.items()}
    model = Sam3Model(Sam3Config.from_pretrained(checkpoint_dir)).eval()
    own = model.state_dict()

    assert set(own) == set(state), (
        f"missing from the file: {sorted(set(own) - set(state))[:10]}; "
        f"not in Sam3Model: {sorted(set(state) - set(own))[:10]}"
    )
    wrong_shape = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape}
    assert not wrong_shape, f"shape mismatches (file, model): {wrong_shape}"
    assert all(v.dtype == torch.float32 for v in state.values())

    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_every_norm_uses_sam3_epsilon(hf_model, reference):
    """transformers defaults the ViT, CLIP text and neck epsilons to 1e-6; sam3 uses torch's
    1e-5 everywhere. The config we write must reach every LayerNorm/GroupNorm that reads one."""

    def epsilons(model):
        norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
        return {name: m.eps for name, m in model.named_modules() if isinstance(m, norms)}

    ours, theirs = epsilons(reference), epsilons(hf_model)
    assert set(ours.values()) == {1e-5}
    off = {name: eps for name, eps in theirs.items() if eps != 1e-5}
    assert not off, f"transformers norms with an epsilon other than sam3's 1e-5: {off}"
    assert len(theirs) == len(ours)  # the same norms exist on both sides


# --- 2. transformers' Sam3Model computes the official outputs --------------------------------


def test_backbone_features_match(reference_out, hf_vision, hf_model, inputs):
    """Where any disagreement would first show: the FPN levels sam3 keeps (the coarsest one is
    scalped by both), their sine position encodings, and the projected text features."""
    features, text, _ = reference_out
    kept = len(features["backbone_fpn"])
    assert kept == len(hf_vision.fpn_hidden_states) - 1  # transformers drops the last level later
    for level in range(kept):
        _assert_near(f"fpn level {level}", features["backbone_fpn"][level], hf_vision.fpn_hidden_states[level])
        _assert_near(
            f"position encoding {level}", features["vision_pos_enc"][level], hf_vision.fpn_position_encoding[level]
        )

    ids = inputs[1]
    with torch.no_grad():
        hf_text = hf_model.get_text_features(input_ids=ids, attention_mask=(ids != 0).long()).pooler_output
    valid = ~text.padding
    _assert_near("text features", text.memory[valid], hf_text[valid])
    # Padding positions differ by design and are never read: transformers' CLIP masks padding
    # keys, sam3's text encoder is causal only; both mask the padding everywhere downstream.


def test_transformers_outputs_match_official(reference_out, hf_model, hf_vision, inputs):
    _, ids, image_index = inputs
    _compare_outputs(reference_out[2], _hf_ground(hf_model, hf_vision, ids, image_index))


def _reference_ground_with_boxes(model, features, text, image_index, boxes, labels) -> dict:
    """``runners.ground`` with a box prompt per text prompt (boxes [B, N, 4] normalised cxcywh,
    labels [B, N]: 1 positive, 0 negative), in sam3's sequence-first ``Prompt``."""
    batch, count = boxes.shape[:2]
    backbone_out = {**features, "language_features": text.memory.transpose(0, 1), "language_mask": text.padding}
    find = FindStage(
        img_ids=image_index,
        text_ids=torch.arange(batch),
        input_boxes=None,
        input_boxes_mask=None,
        input_boxes_label=None,
        input_points=None,
        input_points_mask=None,
    )
    prompt = Prompt(
        box_embeddings=boxes.transpose(0, 1),
        box_labels=labels.transpose(0, 1),
        box_mask=torch.zeros(batch, count, dtype=torch.bool),
    )
    with torch.no_grad(), pinned_memory_optional():
        return model.forward_grounding(
            backbone_out=backbone_out, find_input=find, find_target=None, geometric_prompt=prompt
        )


def test_box_prompts_match_official(reference, reference_out, hf_model, hf_vision, inputs):
    """Text plus one positive and one negative box per prompt: the only path that reads the
    geometry encoder's box projections and label embedding."""
    features, text, _ = reference_out
    _, ids, image_index = inputs
    generator = torch.Generator().manual_seed(2)
    centres = 0.25 + 0.5 * torch.rand(len(PROMPTS), 2, 2, generator=generator)
    sizes = 0.1 + 0.3 * torch.rand(len(PROMPTS), 2, 2, generator=generator)
    boxes = torch.cat([centres, sizes], dim=-1)
    labels = torch.tensor([[1, 0]] * len(PROMPTS))

    sam3_out = _reference_ground_with_boxes(reference, features, text, image_index, boxes, labels)
    hf_out = _hf_ground(hf_model, hf_vision, ids, image_index, boxes, labels)
    _compare_outputs(sam3_out, hf_out)
    # and the boxes did change the answer (so the comparison covered them)
    assert (sam3_out["pred_logits"] - reference_out[2]["pred_logits"]).abs().max() > 1e-2


def test_text_only_call_differs_by_the_geometry_cls_token(reference_out, hf_model, hf_vision, inputs):
    """A genuine implementation difference, pinned: without ``input_boxes`` transformers skips
    the geometry encoder, so its prompt lacks the cls token that sam3 always appends. Measured
    on these weights: pred_logits 0.49 abs (0.44 of their range), presence logit 0.22, boxes
    0.15, masks 10.7 (of 20). If this starts failing, transformers has begun to append the cls
    token for text-only calls: then drop the padding box in ``_hf_ground`` and this test."""
    _, ids, image_index = inputs
    plain = _hf_ground(hf_model, hf_vision, ids, image_index, cls_token=False)
    sam3_out = reference_out[2]
    gaps = {
        "pred_logits": (sam3_out["pred_logits"].squeeze(-1) - plain.pred_logits).abs().max().item(),
        "presence": (sam3_out["presence_logit_dec"] - plain.presence_logits).abs().max().item(),
        "pred_boxes": (_cxcywh_to_xyxy(sam3_out["pred_boxes"]) - plain.pred_boxes).abs().max().item(),
    }
    assert all(gap > 1e-2 for gap in gaps.values()), f"text-only transformers call now matches sam3: {gaps}"


# --- 3. the same file read back into the official model --------------------------------------


def test_load_reference_reads_the_transformers_layout_back(reference, reference_out, checkpoint_dir, inputs):
    model, cfg = load_reference(checkpoint_dir, device="cpu")
    assert cfg == tiny_config()

    # Weights round-trip bit-exactly, except what the transformers layout does not hold: the
    # RoPE tables (recomputed), the position embedding's cls slot (never read; zeros) and the
    # point-prompt projections (text and box prompts never read them).
    original, reloaded = reference.state_dict(), model.state_dict()
    assert set(original) == set(reloaded)
    for key, value in original.items():
        if key.endswith("freqs_cis") or ".points_" in key:
            continue
        if key.endswith("trunk.pos_embed"):
            assert torch.equal(reloaded[key][:, 1:], value[:, 1:])
            continue
        assert torch.equal(reloaded[key], value), key

    images, ids, image_index = inputs
    with torch.no_grad():
        outputs = runners.ground(
            model, runners.image_features(model, images), runners.text_features_from_ids(model, ids), image_index
        )
    for name, expected in reference_out[2].items():  # measured: bit-identical
        _assert_near(f"reloaded {name}", expected, outputs[name], rtol=1e-6)
