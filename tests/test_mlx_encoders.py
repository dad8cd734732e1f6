"""MLX port II at tiny size: the geometry encoder (text-only path), the prompt it completes and
the fusion encoder, each against the reference's own modules on the same weights and inputs,
then sam3's ``_encode_prompt`` + ``_run_encoder`` end to end and the gradient of the encoder
memory with respect to the text features.

The reference is a copy of ``reference_model`` whose parameters that initialisation leaves constant
(LayerNorm weights 1 and biases 0, attention biases 0) are made random: with them constant a
swapped norm or a dropped bias computes the same numbers and no parity test could see it.

Tolerance: both sides compute in fp32 with different kernels and summation orders; the
measured errors are ~2e-7 relative (geometry token, encoder memory) and ~4e-7 (gradient).
1e-5 relative L2 leaves a tenfold margin or more, while a transposed weight, a swapped norm
or a misplaced position encoding shows up as 1e-2 or more.
"""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlx_alias.convert.convert import convert  # noqa: E402
from mlx_alias.model.encoder import FusionEncoder  # noqa: E402
from mlx_alias.model.geometry import GeometryEncoder, text_prompt  # noqa: E402
from mlx_alias.model.weights import load_part  # noqa: E402
from mlx_alias.reference import runners  # noqa: E402
from mlx_alias.reference.checkpoint import save_checkpoint  # noqa: E402
from mlx_alias.reference.compat import pinned_memory_optional  # noqa: E402
from mlx_alias.reference.parity import cosine, nchw, rel_err  # noqa: E402
from mlx_alias.tokenizer import load_tokenizer  # noqa: E402

# isort: split
from sam3.model.data_misc import FindStage  # noqa: E402

FP32 = 1e-5
# Text lengths (non-padding tokens, right-padded as sam3's tokenizer pads) of the prompts in the
# module-level tests: full, short, and one that is all padding but its first token.
TEXT_LENGTHS = [32, 5, 1]
PROMPTS = ["a red car", "", "two small birds sitting on a telephone wire " * 4]  # "" = start, end


@pytest.fixture(scope="module")
def reference(reference_model):
    """reference_model with the constant parameters of the two encoders randomised (see above)."""
    model = copy.deepcopy(reference_model)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for part in (model.geometry_encoder, model.transformer.encoder):
            for p in part.parameters():
                if bool((p == p.flatten()[0]).all()):
                    p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def weights(reference, tiny_cfg, tmp_path_factory) -> dict[str, mx.array]:
    """The reference's weights as a user gets them: sam3.pt written, converted to MLX."""
    root = tmp_path_factory.mktemp("encoders")
    convert(save_checkpoint(reference, tiny_cfg, root / "sam3", "sam3").parent, root / "mlx")
    return mx.load(str(root / "mlx" / "model.safetensors"))


@pytest.fixture(scope="module")
def geometry(tiny_cfg, weights) -> GeometryEncoder:
    return load_part(GeometryEncoder(tiny_cfg), weights, "geometry_encoder.")


@pytest.fixture(scope="module")
def fusion(tiny_cfg, weights) -> FusionEncoder:
    return load_part(FusionEncoder(tiny_cfg), weights, "detr_encoder.")


@pytest.fixture(scope="module")
def inputs(tiny_cfg) -> dict[str, np.ndarray]:
    """Random image tokens of 3 images (batch-first), one shared position encoding, text
    features and their right padding for 3 prompts."""
    rng = np.random.default_rng(0)
    grid = tiny_cfg.vision.grid
    d = tiny_cfg.detector.d_model
    length = tiny_cfg.text.context_length
    padding = np.arange(length)[None] >= np.array(TEXT_LENGTHS)[:, None]
    return {
        "image": rng.standard_normal((3, grid * grid, d)).astype(np.float32),
        "positions": rng.standard_normal((1, grid * grid, d)).astype(np.float32),
        "text": rng.standard_normal((3, length, d)).astype(np.float32),
        "text_padding": padding,
    }


def seq_first(x: np.ndarray, batch: int | None = None) -> torch.Tensor:
    """[B, L, d] numpy -> sam3's [L, B, d] tensor (broadcast to ``batch`` when given)."""
    t = torch.from_numpy(x).transpose(0, 1)
    return t.expand(-1, batch, -1) if batch else t


def reference_geometry(model, image: torch.Tensor, positions: torch.Tensor, grid: int):
    """sam3's geometry encoder on its dummy (zero-box) prompt; image/positions [HW, B, d]."""
    with pinned_memory_optional():
        return model.geometry_encoder(
            geo_prompt=model._get_dummy_prompt(num_prompts=image.shape[1]),
            img_feats=[image],
            img_sizes=[(grid, grid)],
            img_pos_embeds=[positions],
        )


def reference_fusion(
    model, image: torch.Tensor, positions: torch.Tensor, prompt: torch.Tensor, prompt_padding: torch.Tensor, grid: int
) -> dict:
    """sam3's fusion encoder called as ``_run_encoder`` calls it (everything seq-first)."""
    return model.transformer.encoder(
        src=[image],
        src_key_padding_mask=None,
        src_pos=[positions],
        prompt=prompt,
        prompt_pos=torch.zeros_like(prompt),
        prompt_key_padding_mask=prompt_padding,
        feat_sizes=[(grid, grid)],
    )


def test_geometry_token(reference, geometry, inputs, tiny_cfg):
    image, positions = inputs["image"], inputs["positions"]
    with torch.no_grad():
        ref, ref_padding = reference_geometry(
            reference, seq_first(image), seq_first(positions, 3), tiny_cfg.vision.grid
        )
    assert tuple(ref.shape) == (1, 3, tiny_cfg.detector.d_model)
    assert not ref_padding.any()
    mine = geometry(mx.array(image), mx.array(positions))  # positions broadcast over images
    assert mine.shape == (3, 1, tiny_cfg.detector.d_model)
    assert rel_err(mine, ref.transpose(0, 1)) < FP32
    # each image gets its own token: the token really attends to the image
    assert rel_err(mine[0], mine[1]) > 1e-2


def test_prompt_is_text_then_geometry_token(inputs):
    text, padding = mx.array(inputs["text"]), mx.array(inputs["text_padding"])
    token = mx.array(np.random.default_rng(1).standard_normal((1, 1, text.shape[-1])).astype(np.float32))
    prompt, prompt_padding = text_prompt(text, padding, token)
    assert prompt.shape == (3, text.shape[1] + 1, text.shape[2])
    np.testing.assert_array_equal(np.array(prompt[:, :-1]), inputs["text"])  # padding stays in place
    np.testing.assert_array_equal(np.array(prompt[:, -1:]), np.broadcast_to(np.array(token), (3, 1, text.shape[2])))
    np.testing.assert_array_equal(np.array(prompt_padding[:, :-1]), inputs["text_padding"])
    assert not np.array(prompt_padding[:, -1]).any()


def test_fusion_encoder(reference, fusion, inputs, tiny_cfg):
    grid = tiny_cfg.vision.grid
    rng = np.random.default_rng(2)
    token = rng.standard_normal((3, 1, tiny_cfg.detector.d_model)).astype(np.float32)
    prompt, padding = text_prompt(mx.array(inputs["text"]), mx.array(inputs["text_padding"]), mx.array(token))
    with torch.no_grad():
        ref = reference_fusion(
            reference,
            seq_first(inputs["image"]),
            seq_first(inputs["positions"], 3),
            seq_first(np.array(prompt)),
            torch.from_numpy(np.array(padding)),
            grid,
        )
    image, positions = mx.array(inputs["image"]), mx.array(inputs["positions"])
    mine = fusion(fusion.attend_image(image, positions), positions, prompt, padding)
    assert rel_err(mine, ref["memory"].transpose(0, 1)) < FP32
    # what FusionEncoder does not return is its input unchanged
    assert ref["padding_mask"] is None
    assert torch.equal(ref["pos_embed"], seq_first(inputs["positions"], 3))
    assert np.array_equal(ref["memory_text"].transpose(0, 1).numpy(), np.array(prompt))


def test_padded_text_is_ignored(fusion, inputs):
    """Garbage at padded text positions changes nothing: the mask is applied, the right way up."""
    text, padding = inputs["text"], inputs["text_padding"]
    token = mx.zeros((1, 1, text.shape[-1]))
    garbage = np.where(padding[..., None], 100.0, text).astype(np.float32)
    positions = mx.array(inputs["positions"])
    attended = fusion.attend_image(mx.array(inputs["image"]), positions)
    clean = fusion(attended, positions, *text_prompt(mx.array(text), mx.array(padding), token))
    dirty = fusion(attended, positions, *text_prompt(mx.array(garbage), mx.array(padding), token))
    assert rel_err(dirty, clean) < 1e-6
    unmasked = fusion(
        attended, positions, *text_prompt(mx.array(garbage), mx.zeros(padding.shape, dtype=mx.bool_), token)
    )
    assert rel_err(unmasked, clean) > 1e-2


@pytest.fixture(scope="module")
def grounding_inputs(reference, tiny_cfg):
    """Real reference image features of 2 images and text features of 3 prompts, prompt b
    on image ``image_index[b]``."""
    size = tiny_cfg.vision.image_size
    pixels = np.random.default_rng(3).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    ids = torch.from_numpy(np.array(load_tokenizer()(PROMPTS)))
    with torch.no_grad():
        features = runners.image_features(reference, nchw(pixels))
        text = runners.text_features_from_ids(reference, ids)
    return features, text, torch.tensor([0, 1, 0])


def reference_encode(
    model, features: dict, text_memory: torch.Tensor, text_padding: torch.Tensor, image_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """sam3's ``_encode_prompt`` then ``_run_encoder``, set up as ``runners.ground`` sets up
    ``forward_grounding``: (prompt [Lp, B, d], its padding [B, Lp], encoder_out)."""
    batch = text_memory.shape[0]
    backbone_out = {**features, "language_features": text_memory.transpose(0, 1), "language_mask": text_padding}
    find = FindStage(
        img_ids=image_index,
        text_ids=torch.arange(batch),
        input_boxes=None,
        input_boxes_mask=None,
        input_boxes_label=None,
        input_points=None,
        input_points_mask=None,
    )
    with pinned_memory_optional():
        prompt, prompt_padding, backbone_out = model._encode_prompt(
            backbone_out, find, model._get_dummy_prompt(num_prompts=batch)
        )
    _, encoder_out, _ = model._run_encoder(backbone_out, find, prompt, prompt_padding)
    return prompt, prompt_padding, encoder_out


def mlx_image_inputs(features: dict, image_index: torch.Tensor) -> tuple[mx.array, mx.array]:
    """The last kept neck level per prompt [B, HW, d] and its positions [1, HW, d]."""
    level = features["backbone_fpn"][-1][image_index].flatten(2).transpose(1, 2)
    positions = features["vision_pos_enc"][-1][:1].flatten(2).transpose(1, 2)
    return mx.array(level.numpy()), mx.array(positions.numpy())


def test_encode_prompt_and_run_encoder(reference, geometry, fusion, grounding_inputs):
    features, text, image_index = grounding_inputs
    assert text.padding[1, 3:].all() and not text.padding[1, :2].any()  # the "" prompt: 2 tokens
    with torch.no_grad():
        ref_prompt, ref_padding, encoder_out = reference_encode(
            reference, features, text.memory, text.padding, image_index
        )
    image, positions = mlx_image_inputs(features, image_index)
    prompt, padding = text_prompt(
        mx.array(text.memory.numpy()), mx.array(text.padding.numpy()), geometry(image, positions)
    )
    assert rel_err(prompt, ref_prompt.transpose(0, 1)) < FP32
    np.testing.assert_array_equal(np.array(padding), ref_padding.numpy())
    memory = fusion(fusion.attend_image(image, positions), positions, prompt, padding)
    assert rel_err(memory, encoder_out["encoder_hidden_states"].transpose(0, 1)) < FP32
    assert encoder_out["prompt_after_enc"] is ref_prompt  # later stages read the prompt as given


def test_gradient_wrt_text_features(reference, geometry, fusion, grounding_inputs):
    """d(sum(memory * R)) / d(text features), through the whole of both encoders."""
    features, text, image_index = grounding_inputs
    image, positions = mlx_image_inputs(features, image_index)
    tokens, attended = geometry(image, positions), fusion.attend_image(image, positions)
    padding = mx.array(text.padding.numpy())
    weights = np.random.default_rng(4).standard_normal(tuple(image.shape)).astype(np.float32)

    def mlx_loss(text_memory: mx.array) -> mx.array:
        prompt, prompt_padding = text_prompt(text_memory, padding, tokens)
        return (fusion(attended, positions, prompt, prompt_padding) * mx.array(weights)).sum()

    _, mlx_grad = mx.value_and_grad(mlx_loss)(mx.array(text.memory.numpy()))

    text_memory = text.memory.clone().requires_grad_(True)
    _, _, encoder_out = reference_encode(reference, features, text_memory, text.padding, image_index)
    loss = (encoder_out["encoder_hidden_states"].transpose(0, 1) * torch.from_numpy(weights)).sum()
    loss.backward()

    assert float(text_memory.grad.abs().sum()) > 0
    assert cosine(mlx_grad, text_memory.grad) >= 0.9999
    assert rel_err(mlx_grad, text_memory.grad) <= 1e-4
    # padded text positions get no gradient on either side
    assert not np.array(mlx_grad)[text.padding.numpy()].any()
