"""The tiny SAM3 trained on the scene world, as shipped: its provenance, its conversion, MLX
against the reference on it, and that it knows its words."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from mlx_alias.scenes.concepts import CONCEPTS, random_pool
from mlx_alias.scenes.weights import SHIPPED, convert_shipped
from mlx_alias.scenes.world import scene

from clitools import run_cli


@pytest.fixture(scope="module")
def shipped_weights(tmp_path_factory):
    return convert_shipped(tmp_path_factory.mktemp("shipped") / "weights")


def test_provenance_names_the_file_and_every_run_that_made_it():
    """The file's digest, and each command of the chain of runs behind it: a warm restart's
    provenance holds the one of the checkpoint it started from, by that file's digest."""
    provenance = json.loads((SHIPPED / "PROVENANCE.json").read_text())
    digest = hashlib.sha256((SHIPPED / "model.safetensors").read_bytes()).hexdigest()
    assert provenance["model.safetensors"]["sha256"] == digest
    while True:
        assert provenance["command"].startswith("python scripts/train_scenes.py") and "seed" in provenance
        if "init_from" not in provenance:
            break
        assert provenance["init_from"]["sha256"] == provenance["init_from"]["provenance"]["model.safetensors"]["sha256"]
        provenance = provenance["init_from"]["provenance"]


def test_mlx_matches_the_reference_on_the_shipped_weights(shipped_weights, tmp_path):
    """fp32 bounds: the reference loads the float16 file into float32, the converter upcasts it,
    so both compute in float32 on the same values."""
    pytest.importorskip("sam3")
    image = tmp_path / "scene.png"
    Image.fromarray(scene(11).image).save(image)
    for prompt in ("honeycomb", "small striped violet star"):
        result = run_cli(
            "verify",
            "--checkpoint",
            SHIPPED,
            "--weights",
            shipped_weights,
            "--image",
            image,
            "--prompt",
            prompt,
            "--json",
            "--device",
            "cpu",
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.output.strip().splitlines()[-1])
        assert report["passed"] and report["mask_logits_rel_err"] < 1e-4, report


def test_a_trained_word_segments_its_concept_better_than_random_words(shipped_weights, tmp_path):
    """The colours are the words the shipped model learned best (docs/scenes.md): its own word
    segments the concept, random tokens find nothing, and a synonym it never saw fails."""
    from mlx_alias.data.coco import load_dataset
    from mlx_alias.model.weights import load_model
    from mlx_alias.scenes.dataset import write_dataset
    from mlx_alias.search.cache import FeatureCache
    from mlx_alias.search.objective import ObjectiveConfig
    from mlx_alias.search.phase import ids_of
    from mlx_alias.search.task import scorer_for
    from mlx_alias.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    chosen = [c for c in CONCEPTS if c.label in ("red", "purple")]
    write_dataset(tmp_path / "data", chosen, 16, seed=3)
    data = load_dataset(tmp_path / "data")
    model = load_model(shipped_weights)
    cache = FeatureCache(model, shipped_weights, None)
    rng = np.random.default_rng(0)
    randoms = [tuple(int(i) for i in rng.choice(random_pool(tokenizer), 2)) for _ in range(4)]
    for category_id, concept in enumerate(chosen, start=1):
        scorer = scorer_for(model, cache, data, category_id, sorted(data.images), ObjectiveConfig(threshold=0.5), 8)
        prompts = [concept.oracle, concept.label]
        word, label, *others = [
            r.score for r in scorer.exact(ids_of(tokenizer, [tuple(tokenizer.encode(p)) for p in prompts] + randoms))
        ]
        assert word > 0.4 and word > max(others) + 0.3, (concept.label, word, others)
        if concept.family == "synonym":
            assert label < word - 0.3, (concept.label, label, word)
