"""The one key table against the real sam3 and transformers module trees."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_alias.config import ModelConfig, tiny_config
from mlx_alias.convert.hf_config import from_hf, to_hf
from mlx_alias.convert.keymap import RULES, expected_sam3_keys, match_sam3
from mlx_alias.convert.layouts import LayoutError, hf_to_mlx, hf_to_sam3, sam3_to_hf

torch = pytest.importorskip("torch")


def _reference_keys(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    from mlx_alias.reference.build import build_model

    model = build_model(cfg, seed=0, device="cpu")  # full size: ~20 s, 3.4 GB
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cfg", [tiny_config(), ModelConfig()], ids=["tiny", "full"])
def test_expected_keys_are_exactly_the_reference_model_keys(cfg):
    keys = _reference_keys(cfg)
    assert sorted(expected_sam3_keys(cfg)) == sorted(keys)


def test_full_size_official_checkpoint_has_sam3s_key_count():
    # DESIGN.md: the released sam3.pt holds 1,134 detector keys, 32 of them freqs_cis.
    keys = expected_sam3_keys(ModelConfig())
    assert len(keys) == 1134
    assert sum(k.endswith("freqs_cis") for k in keys) == 32


def test_every_rule_matches_its_own_template():
    for rule in RULES:
        key = rule.sam3.replace("{i}", "0") + (rule.params[0] if rule.params else "")
        assert match_sam3(key).rule is rule


def test_sam3_hf_round_trip_is_exact(reference_model, tiny_cfg):
    state = {k: v.numpy() for k, v in reference_model.state_dict().items() if not v.is_complex()}
    hf, dropped = sam3_to_hf(state)
    back = hf_to_sam3(hf, tiny_cfg, cls_slot=state["backbone.vision_backbone.trunk.pos_embed"][:, :1])
    for key, value in state.items():
        if key in back:
            np.testing.assert_array_equal(back[key], value, err_msg=key)
        else:
            assert key in dropped, key
    assert set(back) | {k for k in dropped if k in state} == set(state)


def test_unknown_keys_are_listed():
    with pytest.raises(LayoutError, match="not SAM3 image-model weights: bogus.weight"):
        sam3_to_hf({"bogus.weight": np.zeros(1)})
    with pytest.raises(LayoutError, match="transformers layout: nope"):
        hf_to_mlx({"nope": np.zeros(1)})


@pytest.mark.parametrize("cfg", [tiny_config(), ModelConfig()], ids=["tiny", "full"])
def test_transformers_config_round_trip(cfg):
    assert from_hf(to_hf(cfg)) == cfg
