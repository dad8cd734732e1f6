"""The PyTorch reference path over the official sam3 package, at tiny size on CPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlx_alias.reference.runners import (  # noqa: E402
    ground,
    image_features,
    text_features_from_embeddings,
    text_features_from_ids,
    token_embeddings,
)
from mlx_alias.tokenizer import load_tokenizer  # noqa: E402

PROMPTS = ["a red car", "velvet lantern", "dog", "two small birds on a wire"]


@pytest.fixture(scope="module")
def inputs(tiny_cfg):
    generator = torch.Generator().manual_seed(0)
    size = tiny_cfg.vision.image_size
    images = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
    ids = torch.from_numpy(load_tokenizer()(PROMPTS)).long()
    return images, ids


def test_every_parameter_is_initialised_and_seeded(tiny_cfg, reference_model):
    from mlx_alias.reference.build import build_model, perturb_constant_parameters

    again = build_model(tiny_cfg, seed=7, device="cpu")
    other = build_model(tiny_cfg, seed=8, device="cpu")
    assert perturb_constant_parameters(again, seed=7) > 100  # norms and biases of every part
    for (name, p), q in zip(reference_model.named_parameters(), again.parameters()):
        assert torch.isfinite(p).all(), name
        assert torch.equal(p, q), name
        flat = p.flatten()
        assert flat.numel() == 1 or not torch.equal(flat, flat[:1].expand_as(flat)), f"{name} is constant"
    text = reference_model.backbone.language_backbone.encoder
    assert text.positional_embedding.abs().sum() > 0  # sam3 leaves these torch.empty
    assert not torch.equal(text.positional_embedding, other.backbone.language_backbone.encoder.positional_embedding)


def test_tiny_preset_vocabulary_is_low_rank_and_seeded(tiny_cfg):
    from mlx_alias.reference.build import TINY_VOCABULARY_RANK, build_model, shape_tiny

    def table(seed: int) -> torch.Tensor:
        model = build_model(tiny_cfg, seed=seed, device="cpu")
        plain = model.backbone.language_backbone.encoder.token_embedding.weight.detach().clone()
        shape_tiny(model, seed)
        shaped = model.backbone.language_backbone.encoder.token_embedding.weight.detach()
        assert not torch.equal(plain, shaped)
        return shaped

    shaped = table(5)
    singular = torch.linalg.svdvals(shaped.double())
    # rank 4 exactly, up to float32 rounding of a [49408, 64] product (relative 1e-5)
    assert (singular > 1e-5 * singular[0]).sum() == TINY_VOCABULARY_RANK
    assert 0.9 < float(shaped.std()) < 1.1  # nn.Embedding's scale, which the rest of init assumes
    assert torch.equal(shaped, table(5)) and not torch.equal(shaped, table(6))


def test_grounding_shapes_and_official_score(tiny_cfg, reference_model, inputs):
    images, ids = inputs
    with torch.no_grad():
        features = image_features(reference_model, images)
        out = ground(reference_model, features, text_features_from_ids(reference_model, ids))
    b, q = len(PROMPTS), tiny_cfg.detector.num_queries
    mask = tiny_cfg.vision.grid * 4
    assert out["pred_logits"].shape == (b, q, 1)
    assert out["presence_logit_dec"].shape == (b, 1)
    assert out["pred_boxes"].shape == (b, q, 4)
    assert out["pred_masks"].shape == (b, q, mask, mask)
    expected = torch.sigmoid(out["pred_logits"][..., 0]) * torch.sigmoid(out["presence_logit_dec"])
    torch.testing.assert_close(out["scores"], expected)
    for value in out.values():
        assert torch.isfinite(value).all()


def test_batched_grounding_equals_one_prompt_at_a_time(reference_model, inputs):
    """Prompts over two images in one batch give what each gives alone (fp32, same ops:
    only reduction order may differ, hence 1e-5)."""
    images, ids = inputs
    index = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        features = image_features(reference_model, images)
        batched = ground(reference_model, features, text_features_from_ids(reference_model, ids), index)
        for b in range(len(PROMPTS)):
            single_features = image_features(reference_model, images[index[b] : index[b] + 1])
            alone = ground(reference_model, single_features, text_features_from_ids(reference_model, ids[b : b + 1]))
            for key in ("pred_logits", "presence_logit_dec", "pred_boxes", "pred_masks"):
                torch.testing.assert_close(batched[key][b : b + 1], alone[key], atol=1e-5, rtol=1e-5)


def test_embedding_entry_point_matches_token_ids_and_is_differentiable(reference_model, inputs):
    images, ids = inputs
    from_ids = text_features_from_ids(reference_model, ids)
    embeddings = token_embeddings(reference_model, ids).detach().requires_grad_(True)
    from_embeddings = text_features_from_embeddings(reference_model, embeddings, ids == 0)
    torch.testing.assert_close(from_embeddings.memory, from_ids.memory, atol=0, rtol=0)
    assert torch.equal(from_embeddings.padding, from_ids.padding)
    with torch.no_grad():
        features = image_features(reference_model, images[:1])
    out = ground(reference_model, features, from_embeddings)
    loss = out["pred_masks"].sigmoid().mean() + out["scores"].sum()
    loss.backward()
    grad = embeddings.grad
    assert grad is not None and torch.isfinite(grad).all()
    content = ~(ids == 0)
    assert grad[content].abs().sum() > 0


def test_text_features_depend_on_the_prompt(reference_model, inputs):
    _, ids = inputs
    with torch.no_grad():
        memory = text_features_from_ids(reference_model, ids).memory
    assert not torch.allclose(memory[0], memory[1])


def test_reference_imports_without_triton_or_a_gpu():
    """sam3 imports triton at module level; the reference must work where triton is absent
    (macOS, CPU-only Linux). Block it explicitly and build + run a tiny model."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, warnings; warnings.simplefilter('ignore')\n"
        "from mlx_alias.config import tiny_config\n"
        "from mlx_alias.reference.build import build_model\n"
        "from mlx_alias.reference.runners import image_features, ground, text_features_from_ids\n"
        "m = build_model(tiny_config(), seed=0, device='cpu')\n"
        "f = image_features(m, torch.zeros(1, 3, 224, 224))\n"
        "ids = torch.zeros(1, 32, dtype=torch.long); ids[0, :3] = torch.tensor([49406, 320, 49407])\n"
        "out = ground(m, f, text_features_from_ids(m, ids))\n"
        "print(tuple(out['pred_masks'].shape), sys.modules['sam3.model.edt'].__mlx_alias_stub__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 20, 64, 64) True"


def test_loaded_checkpoints_reproduce_the_model(checkpoints, reference_model, inputs):
    from mlx_alias.reference.checkpoint import load_reference

    images, ids = inputs
    with torch.no_grad():
        expected = ground(
            reference_model, image_features(reference_model, images[:1]), text_features_from_ids(reference_model, ids)
        )
        for fmt, folder in checkpoints.items():
            model, _ = load_reference(folder, device="cpu")
            got = ground(model, image_features(model, images[:1]), text_features_from_ids(model, ids))
            for key in ("pred_logits", "presence_logit_dec", "pred_boxes", "pred_masks"):
                np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=f"{fmt} {key}")
