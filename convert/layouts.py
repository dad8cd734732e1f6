"""Moving weights between the three layouts with the one key table (``keymap.RULES``).

All functions take and return ``{key: numpy array}``; torch-free, so that the transformers
layout converts to MLX without torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from mlx_alias.config import ModelConfig

from .keymap import QKV, RANGES, RULES, Kind, Match, Rule, _pattern, fill, hf_keys_of, match_sam3

Arrays = dict[str, np.ndarray]


class LayoutError(ValueError):
    """A checkpoint whose keys do not fit the layout; the message lists the keys."""


def key_listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def sam3_to_hf(state: Mapping[str, np.ndarray]) -> tuple[Arrays, dict[str, str]]:
    """Official names -> transformers names. Returns the tensors and {dropped key: why}."""
    out: Arrays = {}
    dropped: dict[str, str] = {}
    unknown = []
    for key, value in state.items():
        match = match_sam3(key)
        if match is None:
            unknown.append(key)
            continue
        rule = match.rule
        if rule.hf is None:
            dropped[key] = rule.why
            continue
        targets = hf_keys_of(match)
        if rule.kind is Kind.FUSED_QKV:
            for target, part in zip(targets, np.split(value, 3, axis=0)):
                out[target] = part
        elif rule.kind is Kind.CLS_SLOT:
            out[targets[0]] = value[:, 1:]
            dropped[f"{key}[:, 0]"] = "the position embedding's cls slot: never read without a cls token"
        elif rule.kind is Kind.TRANSPOSED:
            out[targets[0]] = value.T
        else:
            out[targets[0]] = value
    if unknown:
        raise LayoutError(f"{len(unknown)} keys are not SAM3 image-model weights: {key_listing(unknown)}")
    return out, dropped


def _hf_patterns() -> list[tuple[Rule, re.Pattern[str]]]:
    patterns = []
    for rule in RULES:
        if rule.hf is None:
            continue
        between = r"(?P<qkv>q_proj|k_proj|v_proj)\." if rule.kind is Kind.FUSED_QKV else ""
        patterns.append((rule, _pattern(rule.hf, rule.params, between)))
    return patterns


_HF_PATTERNS = _hf_patterns()


def match_hf(key: str, cfg: ModelConfig | None = None) -> tuple[Match, str | None] | None:
    """The rule behind a transformers-layout key, and which of q/k/v it is (if fused).
    The neck's ``scale_layers.0`` is a different official module at a 4x and a 2x level:
    with ``cfg`` the level's scale decides; without it either serves (same kind)."""
    for rule, pattern in _HF_PATTERNS:
        m = pattern.match(key)
        if m is None:
            continue
        groups = m.groupdict()
        if cfg is not None and rule.over and int(groups["i"]) not in RANGES[rule.over](cfg):
            continue
        return Match(rule, groups.get("i"), groups.get("p")), groups.get("qkv")
    return None


def hf_to_sam3(state: Mapping[str, np.ndarray], cfg: ModelConfig, cls_slot: np.ndarray | None = None) -> Arrays:
    """Transformers names -> official names, for loading a transformers checkpoint into the
    reference. The cls slot that the transformers layout dropped is never read by sam3;
    ``cls_slot`` (shape [1, 1, C]) fills it, zeros if not given."""
    out: Arrays = {}
    pending: dict[str, dict[str, np.ndarray]] = {}
    unknown = []
    for key, value in state.items():
        found = match_hf(key, cfg)
        if found is None:
            unknown.append(key)
            continue
        match, part = found
        rule = match.rule
        target = fill(rule.sam3, match.index) + (match.param or "")
        if rule.kind is Kind.FUSED_QKV:
            pending.setdefault(target, {})[part] = value
        elif rule.kind is Kind.CLS_SLOT:
            slot = cls_slot if cls_slot is not None else np.zeros_like(value[:, :1])
            out[target] = np.concatenate([slot.astype(value.dtype), value], axis=1)
        elif rule.kind is Kind.TRANSPOSED:
            out[target] = np.ascontiguousarray(value.T)
        else:
            out[target] = value
    if unknown:
        raise LayoutError(
            f"{len(unknown)} keys are not SAM3 weights in the transformers layout: {key_listing(unknown)}"
        )
    for target, parts in pending.items():
        missing = [name for name in QKV if name not in parts]
        if missing:
            raise LayoutError(f"{target} lacks its {', '.join(missing)} part")
        out[target] = np.concatenate([parts[name] for name in QKV], axis=0)
    return out


def hf_to_mlx(state: Mapping[str, np.ndarray]) -> tuple[Arrays, dict[str, str]]:
    """Transformers names -> canonical MLX weights: same names, conv kernels channels-last,
    weights the MLX model never reads dropped (returned with the reason)."""
    out: Arrays = {}
    dropped: dict[str, str] = {}
    unknown = []
    for key, value in state.items():
        found = match_hf(key)
        if found is None:
            unknown.append(key)
            continue
        rule = found[0].rule
        if not rule.mlx:
            dropped[key] = rule.why
        elif rule.kind is Kind.CONV and value.ndim == 4:
            out[key] = np.ascontiguousarray(value.transpose(0, 2, 3, 1))
        elif rule.kind is Kind.CONV_T and value.ndim == 4:
            out[key] = np.ascontiguousarray(value.transpose(1, 2, 3, 0))
        else:
            out[key] = value
    if unknown:
        raise LayoutError(
            f"{len(unknown)} keys are not SAM3 weights in the transformers layout: {key_listing(unknown)}"
        )
    return out, dropped
