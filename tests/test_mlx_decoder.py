"""MLX port II: the DETR decoder (queries, refined boxes, presence logit) and the dot-product
scoring, against sam3's own ``Sam3Image._run_decoder`` (decoder, ``_update_scores_and_boxes``,
``DotProductScoring``) on the same weights and the same random memory and prompts.

Random init leaves many decoder weights constant (layer norms at 1 and 0, attention biases and
the box head's last layer at 0), where a swapped or dropped tensor would go unnoticed; the
reference is therefore a copy of the tiny model with those given random values, converted to
MLX names in-process with the converter's own key table.

Tolerance: both sides compute in fp32 with different kernels and summation orders. Measured
relative L2 errors are 1e-7 to 1e-6 for the outputs (up to 3e-6 for a single presence logit
after six full-size layers) and ~6e-7 for the gradients; 1e-5 leaves a threefold margin and
more, while a wrong weight, layout, mask or formula shows up as 1e-3 or more (the grid's height
and width swapped: ~1e-3 on 9 x 14).
"""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlx_alias.config import DetectorConfig, ModelConfig, tiny_config  # noqa: E402
from mlx_alias.convert import layouts  # noqa: E402
from mlx_alias.model.decoder import Decoder, cxcywh_to_xyxy  # noqa: E402
from mlx_alias.model.scoring import DotProductScoring  # noqa: E402
from mlx_alias.model.weights import load_part  # noqa: E402
from mlx_alias.reference import build  # noqa: E402
from mlx_alias.reference.parity import cosine, rel_err  # noqa: E402

FP32 = 1e-5
PROMPT_LENGTHS = (12, 7, 3)  # valid tokens per prompt; the rest of the 12 positions is padding


def perturb_constant_parameters(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in (model.transformer.decoder, model.dot_prod_scoring):
            for p in part.parameters():
                if torch.all(p == p.flatten()[0]):
                    p.add_(0.1 * torch.randn(p.shape, generator=generator))


def mlx_parts(reference: torch.nn.Module, cfg: ModelConfig) -> tuple[Decoder, DotProductScoring]:
    state = {
        key: value.detach().numpy()
        for key, value in reference.state_dict().items()
        if key.startswith(("transformer.decoder.", "dot_prod_scoring."))
    }
    hf, _ = layouts.sam3_to_hf(state)
    weights = {key: mx.array(value) for key, value in layouts.hf_to_mlx(hf)[0].items()}
    return (
        load_part(Decoder(cfg), weights, "detr_decoder."),
        load_part(DotProductScoring(cfg), weights, "dot_product_scoring."),
    )


def random_inputs(cfg: ModelConfig, grid: tuple[int, int], lengths: tuple[int, ...], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    d, tokens, width = cfg.detector.d_model, grid[0] * grid[1], max(lengths)
    return {
        "memory": rng.standard_normal((len(lengths), tokens, d)).astype(np.float32),
        "memory_positions": rng.standard_normal((1, tokens, d)).astype(np.float32),
        "grid": grid,
        "prompt": rng.standard_normal((len(lengths), width, d)).astype(np.float32),
        "prompt_padding": np.arange(width)[None] >= np.array(lengths)[:, None],
    }


def reference_outputs(
    model: torch.nn.Module,
    memory: torch.Tensor,
    memory_positions: torch.Tensor,
    grid: tuple[int, int],
    prompt: torch.Tensor,
    prompt_padding: torch.Tensor,
) -> dict:
    """sam3's decoder and heads as ``forward_grounding`` runs them (sequence-first inputs)."""
    batch = memory.shape[0]
    encoder_out = {
        "level_start_index": torch.zeros(1, dtype=torch.long),
        "spatial_shapes": torch.tensor([grid]),
        "valid_ratios": torch.ones(batch, 1, 2),
    }
    out, _ = model._run_decoder(
        pos_embed=memory_positions.expand(batch, -1, -1).transpose(0, 1),
        memory=memory.transpose(0, 1),
        src_mask=None,
        out={},
        prompt=prompt.transpose(0, 1),
        prompt_mask=prompt_padding,
        encoder_out=encoder_out,
    )
    return out


def mlx_outputs(
    decoder: Decoder,
    scoring: DotProductScoring,
    memory: mx.array,
    memory_positions: mx.array,
    grid: tuple[int, int],
    prompt: mx.array,
    prompt_padding: mx.array,
) -> dict:
    out = decoder(memory, memory_positions, grid, prompt, prompt_padding)
    return {
        "queries": out.queries,
        "pred_boxes": out.boxes,
        "pred_boxes_xyxy": cxcywh_to_xyxy(out.boxes),
        "pred_logits": scoring(out.queries, prompt, prompt_padding),
        "presence_logit_dec": out.presence_logit,
    }


def assert_parity(reference: torch.nn.Module, decoder: Decoder, scoring: DotProductScoring, inputs: dict) -> None:
    with torch.no_grad():
        ref = reference_outputs(
            reference, **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
        )
    mine = mlx_outputs(
        decoder, scoring, **{k: mx.array(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
    )
    for key, value in mine.items():
        assert value.shape == tuple(ref[key].shape), key
        assert rel_err(value, ref[key]) < FP32, (key, rel_err(value, ref[key]))


@pytest.fixture(scope="module")
def pair(reference_model, tiny_cfg):
    reference = copy.deepcopy(reference_model)
    perturb_constant_parameters(reference, seed=0)
    return reference, *mlx_parts(reference, tiny_cfg)


@pytest.mark.parametrize("grid", [(16, 16), (9, 14)])  # the tiny image's grid; a non-square one
def test_decoder_boxes_scores_and_presence(pair, tiny_cfg, grid):
    inputs = random_inputs(tiny_cfg, grid, PROMPT_LENGTHS, seed=1)
    assert_parity(*pair, inputs)


def test_outputs_depend_on_prompt_and_padding(pair, tiny_cfg):
    """Guards the parity test against inputs that do not matter: changing a valid prompt token
    changes every output; changing a padded one changes none."""
    _, decoder, scoring = pair
    inputs = random_inputs(tiny_cfg, (16, 16), PROMPT_LENGTHS, seed=1)

    def run(prompt):
        return mlx_outputs(
            decoder,
            scoring,
            mx.array(inputs["memory"]),
            mx.array(inputs["memory_positions"]),
            inputs["grid"],
            mx.array(prompt),
            mx.array(inputs["prompt_padding"]),
        )

    base = run(inputs["prompt"])
    last_valid, first_padded = PROMPT_LENGTHS[1] - 1, PROMPT_LENGTHS[1]
    for position, changes in ((last_valid, True), (first_padded, False)):
        prompt = inputs["prompt"].copy()
        prompt[1, position] += 1.0
        changed = run(prompt)
        for key in base:
            difference = mx.abs(changed[key][1] - base[key][1]).max().item()
            assert (difference > 1e-4) == changes, (key, position, difference)


def test_scores_are_clamped(pair, tiny_cfg):
    reference, _, scoring = pair
    rng = np.random.default_rng(2)
    queries = 200 * rng.standard_normal((3, 20, tiny_cfg.detector.d_model)).astype(np.float32)
    prompt = rng.standard_normal((3, 12, tiny_cfg.detector.d_model)).astype(np.float32)
    padding = np.arange(12)[None] >= np.array(PROMPT_LENGTHS)[:, None]
    with torch.no_grad():
        ref = reference.dot_prod_scoring(
            torch.from_numpy(queries)[None], torch.from_numpy(prompt).transpose(0, 1), torch.from_numpy(padding)
        )[0]
    assert (ref.abs() == 12).float().mean() > 0.2  # the clamp is exercised
    assert rel_err(scoring(mx.array(queries), mx.array(prompt), mx.array(padding)), ref) < FP32


def test_gradients_wrt_prompt_and_memory(pair, tiny_cfg):
    """Gradient of a fixed random weighting of boxes, scores and presence with respect to the
    prompt and the memory, by ``mx.value_and_grad`` and by torch autograd. It also checks where
    sam3 detaches the boxes between layers: detaching none changes it by ~3e-3, all by ~1e-1."""
    reference, decoder, scoring = pair
    inputs = random_inputs(tiny_cfg, (16, 16), PROMPT_LENGTHS, seed=3)
    rng = np.random.default_rng(4)
    batch, queries = len(PROMPT_LENGTHS), tiny_cfg.detector.num_queries
    weights = {
        "pred_boxes": rng.standard_normal((batch, queries, 4)).astype(np.float32),
        "pred_logits": rng.standard_normal((batch, queries, 1)).astype(np.float32),
        "presence_logit_dec": rng.standard_normal((batch, 1)).astype(np.float32),
    }
    grid, padding = inputs["grid"], inputs["prompt_padding"]

    def mlx_loss(prompt: mx.array, memory: mx.array) -> mx.array:
        out = mlx_outputs(
            decoder, scoring, memory, mx.array(inputs["memory_positions"]), grid, prompt, mx.array(padding)
        )
        return sum((out[key] * mx.array(w)).sum() for key, w in weights.items())

    value, (prompt_grad, memory_grad) = mx.value_and_grad(mlx_loss, argnums=(0, 1))(
        mx.array(inputs["prompt"]), mx.array(inputs["memory"])
    )

    prompt = torch.from_numpy(inputs["prompt"]).requires_grad_(True)
    memory = torch.from_numpy(inputs["memory"]).requires_grad_(True)
    out = reference_outputs(
        reference, memory, torch.from_numpy(inputs["memory_positions"]), grid, prompt, torch.from_numpy(padding)
    )
    loss = sum((out[key] * torch.from_numpy(w)).sum() for key, w in weights.items())
    loss.backward()

    assert abs(value.item() - loss.item()) <= FP32 * max(abs(loss.item()), 1.0)
    for mine, ref in ((prompt_grad, prompt.grad), (memory_grad, memory.grad)):
        assert cosine(mine, ref) >= 0.9999
        assert rel_err(mine, ref) <= 1e-4


def test_full_detector_sizes():
    """The released detector's sizes (200 queries, 2048-wide MLPs) on the full image's 72 x 72
    grid: nothing depends on the tiny sizes. Three decoder layers instead of six keep it quick;
    an odd count and more than the tiny two is all the layer loop can tell."""
    detector = DetectorConfig(decoder_layers=3)
    cfg = ModelConfig(vision=tiny_config().vision, text=tiny_config().text, detector=detector)
    reference = build.build_model(cfg, seed=5, device="cpu")
    perturb_constant_parameters(reference, seed=6)
    decoder, scoring = mlx_parts(reference, cfg)
    assert_parity(reference, decoder, scoring, random_inputs(cfg, (72, 72), (5,), seed=7))
