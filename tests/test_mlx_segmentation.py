"""The segmentation head at tiny size against sam3's ``UniversalSegmentationHead`` on the same
weights and the same random inputs: 4 prompts over 2 images, each prompt with its own padding.

Tolerance: both sides compute in fp32 with different kernels and summation orders (the prompt
cross-attention, two 3x3 convs with GroupNorm, the mask dot products); measured relative L2
errors are 8e-7 for the masks and 1.1e-6 for the semantic logits (MLX alone is 4e-7 from a
float64 reference: most of it is torch's fp32 rounding). Gradients are compared with float64
autograd (see that test); 1e-5 (values) and 1e-4 (gradients) leave a tenfold margin or more
while a wrong weight, layout, norm grouping or upsampling shows up as 1e-2 or more.
"""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from mlx_alias.model.segmentation import SegmentationHead, conv3x3_upsampled  # noqa: E402
from mlx_alias.model.weights import load_part  # noqa: E402
from mlx_alias.reference.parity import cosine, nchw, rel_err  # noqa: E402

FP32 = 1e-5
GRAD = 1e-4
PROMPT_LENGTHS = [8, 3, 5, 1]  # valid tokens per prompt; the rest is padding
IMAGE_IDS = [1, 0, 1, 0]  # prompt -> image, over 2 images


@pytest.fixture(scope="module")
def head(tiny_cfg, mlx_weights):
    weights = mx.load(str(mlx_weights / "model.safetensors"))
    return load_part(SegmentationHead(tiny_cfg), weights, "mask_decoder.")


def _random_inputs(cfg, grid: int) -> dict[str, np.ndarray]:
    """Neck levels of 2 images at ``grid`` * (4, 2, 1), the encoder memory over the lowest,
    decoder queries, prompts with PROMPT_LENGTHS valid tokens, and mask targets for a loss."""
    rng = np.random.default_rng(0)
    det = cfg.detector
    batch, images, prompt_len = len(IMAGE_IDS), 2, max(PROMPT_LENGTHS)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return {
        "levels": [normal(images, grid * s, grid * s, det.d_model) for s in (4, 2, 1)],
        "memory": normal(batch, grid * grid, det.d_model),
        "queries": normal(det.decoder_layers, batch, det.num_queries, det.d_model),  # all layers, as sam3 gets
        "prompt": normal(batch, prompt_len, det.d_model),
        "padding": np.arange(prompt_len)[None, :] >= np.array(PROMPT_LENGTHS)[:, None],
        "targets": (rng.uniform(size=(batch, det.num_queries, grid * 4, grid * 4)) < 0.3).astype(np.float32),
    }


@pytest.fixture(scope="module")
def inputs(tiny_cfg) -> dict[str, np.ndarray]:
    """At the tiny model's own sizes (levels 64x64, 32x32, 16x16)."""
    return _random_inputs(tiny_cfg, tiny_cfg.vision.grid)


@pytest.fixture(scope="module")
def small_inputs(tiny_cfg) -> dict[str, np.ndarray]:
    """Half the tiny grid (32x32, 16x16, 8x8; the head takes any level sizes): a quarter of the
    work for the float64 backward and the repeated forwards, same code paths."""
    return _random_inputs(tiny_cfg, tiny_cfg.vision.grid // 2)


def _reference(reference_head, x, *, queries=None, prompt=None, dtype=torch.float32):
    """sam3's head on ``x``: NCHW images, sequence-first memory and prompt, image_ids."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dtype)

    queries = tensor(x["queries"]) if queries is None else queries
    prompt = tensor(x["prompt"]) if prompt is None else prompt
    return reference_head(
        backbone_feats=[nchw(level).to(dtype) for level in x["levels"]],
        obj_queries=queries,
        image_ids=torch.tensor(IMAGE_IDS),
        encoder_hidden_states=tensor(x["memory"]).transpose(0, 1),
        prompt=prompt.transpose(0, 1),
        prompt_mask=torch.from_numpy(x["padding"]),
    )


def _mine(head, x, *, queries=None, prompt=None):
    """The MLX head on the same inputs: the image-only part once per image, then each prompt's
    image picked from it, as ``Sam3.segment`` does."""
    ids = mx.array(IMAGE_IDS)
    return head(
        [skip[ids] for skip in head.skips([mx.array(level) for level in x["levels"]])],
        mx.array(x["memory"]),
        mx.array(x["queries"][-1]) if queries is None else queries,
        mx.array(x["prompt"]) if prompt is None else prompt,
        mx.array(x["padding"]),
    )


def _loss_mlx(masks: mx.array, targets: mx.array) -> mx.array:
    return mx.mean(mx.logaddexp(0.0, masks) - targets * masks)  # binary cross-entropy on logits


def test_masks_and_semantic_match_reference(reference_model, head, inputs):
    with torch.no_grad():
        ref = _reference(reference_model.segmentation_head, inputs)
    masks, semantic = _mine(head, inputs)
    size = 4 * inputs["levels"][-1].shape[1]
    assert masks.shape == (len(IMAGE_IDS), inputs["queries"].shape[2], size, size)
    assert semantic.shape == (len(IMAGE_IDS), size, size)
    assert rel_err(masks, ref["pred_masks"]) < FP32
    assert rel_err(semantic, ref["semantic_seg"][:, 0]) < FP32
    mine_fg, ref_fg = np.array(masks) > 0, ref["pred_masks"].numpy() > 0
    iou = (mine_fg & ref_fg).sum() / (mine_fg | ref_fg).sum()
    assert iou > 0.999  # sanity: only logits within rounding of 0 may flip


def test_prompt_padding_and_image_ids_matter(head, small_inputs):
    """The parity above could hide an ignored mask or image mapping if they changed nothing."""
    inputs = small_inputs
    masks, _ = _mine(head, inputs)
    unpadded = dict(inputs, padding=np.zeros_like(inputs["padding"]))
    assert rel_err(_mine(head, unpadded)[0], masks) > 1e-3
    swapped = dict(inputs, levels=[np.ascontiguousarray(level[::-1]) for level in inputs["levels"]])
    assert rel_err(_mine(head, swapped)[0], masks) > 1e-3


def test_one_image_broadcasts_over_prompts(head, small_inputs):
    """Levels of batch 1 serve every prompt without copies, as sam3's bs=1 path does."""
    one = [level[:1] for level in small_inputs["levels"]]
    memory, queries = mx.array(small_inputs["memory"]), mx.array(small_inputs["queries"][-1])
    prompt, padding = mx.array(small_inputs["prompt"]), mx.array(small_inputs["padding"])
    shared = head(head.skips([mx.array(level) for level in one]), memory, queries, prompt, padding)
    tiled_levels = [mx.array(np.repeat(level, len(IMAGE_IDS), axis=0)) for level in one]
    tiled = head(head.skips(tiled_levels), memory, queries, prompt, padding)
    for a, b in zip(shared, tiled):
        assert a.shape == b.shape and rel_err(a, b) < 1e-6


def test_gradients_match_reference(reference_model, head, small_inputs):
    """Against torch autograd in float64, because fp32 is not a sharp enough reference for the
    prompt's gradient: the prompt reaches the masks only through the memory, where a shift
    shared by all tokens is nearly cancelled by the GroupNorms, so that gradient is a sum with
    heavy cancellation. At the tiny sizes torch fp32 is 3.7e-5 (relative L2) away from its own
    float64 result, MLX 9e-6. Here, at half the tiny grid (float64 convs are slow), both are
    ~3e-7, as is the queries' gradient."""
    inputs = small_inputs
    reference_head = copy.deepcopy(reference_model.segmentation_head).double()
    queries = torch.from_numpy(inputs["queries"]).double().requires_grad_(True)
    prompt = torch.from_numpy(inputs["prompt"]).double().requires_grad_(True)
    ref_out = _reference(reference_head, inputs, queries=queries, prompt=prompt, dtype=torch.float64)
    ref_masks = ref_out["pred_masks"]
    F.binary_cross_entropy_with_logits(ref_masks, torch.from_numpy(inputs["targets"]).double()).backward()

    targets = mx.array(inputs["targets"])

    def loss(q, p):
        return _loss_mlx(_mine(head, inputs, queries=q, prompt=p)[0], targets)

    _, (grad_q, grad_p) = mx.value_and_grad(loss, argnums=(0, 1))(
        mx.array(inputs["queries"][-1]), mx.array(inputs["prompt"])
    )
    ref_q, ref_p = queries.grad[-1], prompt.grad
    assert float(ref_p.abs().sum()) > 0 and float(ref_q.abs().sum()) > 0
    for mine, ref in ((grad_q, ref_q), (grad_p, ref_p)):
        assert cosine(mine, ref) >= 0.9999
        assert rel_err(mine, ref) <= GRAD


@pytest.mark.parametrize("size", [(16, 16), (5, 7), (1, 3)])
def test_conv_of_upsampled_matches_torch(size):
    """The pixel decoder's conv of the 2x nearest-upsampled map, computed at the map's own
    resolution, against torch's conv2d of F.interpolate's upsampling, borders and odd sizes
    included. Tolerance 1e-5 relative L2: fp32 with sums in another order (measured ~5e-7)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *size, 6)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 6)).astype(np.float32)
    up = F.interpolate(nchw(x), size=(2 * size[0], 2 * size[1]), mode="nearest")
    ref = F.conv2d(up, torch.from_numpy(weight).permute(0, 3, 1, 2), padding=1).permute(0, 2, 3, 1)
    mine = conv3x3_upsampled(mx.array(x), mx.array(weight))
    assert mine.shape == tuple(ref.shape)
    assert rel_err(mine, ref) < FP32


def test_pixel_decoder_refuses_levels_not_2x_apart(head, small_inputs):
    skips = head.skips([mx.array(level) for level in small_inputs["levels"]])
    lowest = mx.zeros((1, 5, 5, skips[0].shape[-1]))
    with pytest.raises(ValueError, match="2x apart"):
        head.pixel_decoder(skips, lowest)
