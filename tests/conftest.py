"""Shared fixtures: tiny random SAM3 checkpoints made by the reference path, in both layouts."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

from mlx_alias.config import tiny_config

# Ray on Linux advertises the machine's network address for a cluster's nodes unless this is
# set before `import ray`: the cluster tests must stay on loopback (tests/test_cluster.py).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
warnings.filterwarnings("ignore", module="sam3")  # sam3 warns about CUDA autocast at import
# The benchmarks import their baselines (benchmarks/baselines.py) by name, as when run as scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _reference():
    pytest.importorskip("torch")
    pytest.importorskip("sam3")
    from mlx_alias.reference import build, checkpoint

    return build, checkpoint


@pytest.fixture(scope="session")
def tiny_cfg():
    return tiny_config()


@pytest.fixture(scope="session")
def reference_model(tiny_cfg):
    """Seeded random weights with every constant-initialised tensor perturbed, so that parity
    tests can see a swapped norm or a dropped bias."""
    build, _ = _reference()
    model = build.build_model(tiny_cfg, seed=7, device="cpu")
    build.perturb_constant_parameters(model, seed=7)
    return model


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, reference_model, tiny_cfg) -> dict[str, Path]:
    """{"sam3": folder with sam3.pt + config.json, "hf": folder with model.safetensors + config.json}"""
    _, checkpoint = _reference()
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        fmt: checkpoint.save_checkpoint(reference_model, tiny_cfg, root / fmt, fmt).parent for fmt in ("sam3", "hf")
    }


@pytest.fixture(scope="session")
def mlx_weights(checkpoints, tmp_path_factory) -> Path:
    """The tiny checkpoint converted to MLX (fp32)."""
    from mlx_alias.convert.convert import convert

    out = tmp_path_factory.mktemp("mlx") / "fp32"
    convert(checkpoints["sam3"], out)
    return out


@pytest.fixture(scope="session")
def mlx_model(mlx_weights):
    from mlx_alias.model.weights import load_model

    return load_model(mlx_weights)


@pytest.fixture(scope="session")
def search_weights(tmp_path_factory) -> Path:
    """The tiny model as ``mlx-alias init --preset tiny`` makes it (scoring sharpened,
    low-rank vocabulary, not perturbed), converted: what searches run on. Official scores spread around 0.5. The
    folder holds ``sam3/`` (the checkpoint) and ``mlx/`` (the weights)."""
    build, checkpoint = _reference()
    from mlx_alias.config import tiny_config
    from mlx_alias.convert.convert import convert

    model = build.build_model(tiny_config(), seed=3, device="cpu")
    build.shape_tiny(model, seed=3)
    root = tmp_path_factory.mktemp("search_model")
    convert(checkpoint.save_checkpoint(model, tiny_config(), root / "sam3").parent, root / "mlx")
    return root


@pytest.fixture(scope="session")
def search_model(search_weights):
    from mlx_alias.model.weights import load_model

    return load_model(search_weights / "mlx")


@pytest.fixture(scope="module")
def scorer(mlx_model):
    """The plain tiny model's scorer over two random images, one with an instance, one negative;
    threshold 0.25, as that model's scores sit near 0.3. One per test module, as it counts
    evaluations."""
    import mlx.core as mx
    import numpy as np

    from mlx_alias.search.objective import MaskTarget, ObjectiveConfig
    from mlx_alias.search.scorer import Scorer

    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    features = mlx_model.encode_image(mx.array(pixels))
    size = features.levels[0].shape[1]
    box = np.zeros((size, size), bool)
    box[10:40, 20:50] = True
    none = np.zeros_like(box)
    targets = [MaskTarget(box[None], none), MaskTarget(np.zeros((0, size, size), bool), none)]
    return Scorer(mlx_model, features, targets, ObjectiveConfig(threshold=0.25, temperature=0.05, mask_temperature=1.0))


@pytest.fixture(scope="session")
def planted(search_weights, search_model, tmp_path_factory) -> tuple[Path, float]:
    """A dataset planted by ``mlx-alias plant`` with the hidden prompt on 9 synthetic images, at
    the demo's threshold rule: (dataset folder, threshold)."""
    from mlx_alias.plant import planting_rule, synthetic_images
    from mlx_alias.tokenizer import load_tokenizer

    from clitools import HIDDEN, run_cli

    root = tmp_path_factory.mktemp("planted")
    paths = synthetic_images(root / "images", 9, seed=2)  # seed 1: no planting threshold fits (see gap_threshold)
    threshold, _ = planting_rule(search_model, paths, load_tokenizer()(HIDDEN))
    result = run_cli(
        "plant",
        "--weights",
        search_weights / "mlx",
        "--images",
        root / "images",
        "--prompt",
        HIDDEN,
        "--out",
        root / "dataset",
        "--threshold",
        threshold,
    )
    assert result.exit_code == 0, result.output
    return root / "dataset", threshold


@pytest.fixture(scope="module")
def world(search_model):
    """A search phase's world on the search model: two random images (a box to find, and a
    negative), a small random vocabulary (so that leaks show), contexts over them that share
    one memo of exact scores (the same model, images and objective give the same scores), and
    three random 4-token starts scored: (context(seed), starts)."""
    import mlx.core as mx
    import numpy as np

    from mlx_alias.search.objective import MaskTarget, ObjectiveConfig
    from mlx_alias.search.phase import SearchContext
    from mlx_alias.search.scorer import Scorer
    from mlx_alias.tokenizer import load_tokenizer

    rng = np.random.default_rng(0)
    features = search_model.encode_image(mx.array(rng.uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)))
    size = features.levels[0].shape[1]
    box = np.zeros((size, size), bool)
    box[10:40, 20:50] = True
    nothing = np.zeros_like(box)
    targets = [MaskTarget(box[None], nothing), MaskTarget(np.zeros((0, size, size), bool), nothing)]
    # the surrogate's temperatures fixed
    scorer = Scorer(search_model, features, targets, ObjectiveConfig(temperature=0.05, mask_temperature=1.0))
    tokenizer = load_tokenizer()
    allowed = np.zeros(tokenizer.eot_id + 1, bool)
    allowed[rng.choice(np.arange(1, tokenizer.sot_id), 3000, replace=False)] = True
    seen: dict = {}

    def context(seed: int = 1) -> SearchContext:
        return SearchContext(search_model, scorer, tokenizer, allowed, 4, np.random.default_rng(seed), seen)

    starts = [tuple(int(t) for t in rng.choice(np.flatnonzero(allowed), 4)) for _ in range(3)]
    return context, context().evaluate(starts)


@pytest.fixture(scope="module")
def task(search_model):
    """A category task on the search model: two random images, each with one box to find."""
    import mlx.core as mx
    import numpy as np

    from mlx_alias.data.coco import Category
    from mlx_alias.search.objective import MaskTarget, ObjectiveConfig
    from mlx_alias.search.scorer import Scorer
    from mlx_alias.search.task import CategoryTask

    rng = np.random.default_rng(2)
    features = search_model.encode_image(mx.array(rng.uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)))
    size = features.levels[0].shape[1]
    box = np.zeros((size, size), bool)
    box[30:90, 10:70] = True
    targets = [MaskTarget(box[None], np.zeros_like(box)), MaskTarget(box[None, ::-1], np.zeros_like(box))]
    return CategoryTask(Category(1, None), None, Scorer(search_model, features, targets, ObjectiveConfig()), None)
