"""Throughput of the MLX port and of the PyTorch reference, in one run on the same inputs.

    python benchmarks/throughput.py --preset tiny
    python benchmarks/throughput.py --preset full --images 1 --batch 2 --repeats 1 --json
    python benchmarks/throughput.py --preset full --dtype bfloat16      # on a CUDA machine

A seeded random SAM3 is built through the reference (as ``benchmarks/search_quality.py`` does;
the tiny preset with its sharpened scores), written as ``sam3.pt``, converted with ``--dtype``
and loaded. The inputs: the demo's synthetic images, a few random boxes per image as target
masks (every fourth image a negative), random 3-token candidates. Each side in turn (torch, then
MLX: one model in memory at a time) measures:

- image encode: the ``--images`` images in one batch, seconds per image;
- exact evaluations per second: ``--candidates`` candidates (default ``--batch``) on every image
  with the search objective at full mask resolution, against cached image features, grounded in
  chunks of ``--batch`` (candidate, image) pairs (``Scorer`` / ``TorchScorer``.exact);
- seed-style evaluation: the image read, preprocessed and encoded again for each candidate, one
  candidate at a time; seconds per evaluation (its parts are warm from the stages before);
- soft-prompt step: value and gradient of the surrogate with respect to one prompt's input
  embeddings, through the text encoder and grounding against every image. MLX runs the
  search's own ``Scorer.surrogate``, compiled as the soft phase compiles it (the warm-up run
  traces it and builds its kernels); torch a line-for-line port of it (both values reported);
- peak memory: MLX's allocator peak; torch's ``max_memory_allocated`` on CUDA; and the process's
  peak resident set through the torch stages (model building included: torch's figure on a
  CPU) and over the whole run.

Each measured thing runs once to warm up (compilation, lazy initialisation), then ``--repeats``
times with the work forced (``mx.eval``, ``torch.cuda.synchronize``); the median is reported.
MLX runs on its default device; torch on CUDA when available, else the CPU. Float32 is exact
float32 on both sides (TF32 off, as for parity). With a half ``--dtype`` MLX runs converted
half weights; torch runs under ``torch.autocast`` on CUDA, and in float32 on a CPU (reported).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx_alias  # noqa: F401  (first: it loads MKL for MLX's CPU matmuls before mlx.core; see blas.py)

# isort: split
import mlx.core as mx
import numpy as np
import torch

from mlx_alias.config import PRESETS
from mlx_alias.convert.convert import convert
from mlx_alias.image import load_image, preprocess_batch
from mlx_alias.model.weights import load_model
from mlx_alias.plant import synthetic_images
from mlx_alias.reference import runners
from mlx_alias.reference.build import build_model, shape_tiny
from mlx_alias.reference.checkpoint import save_checkpoint
from mlx_alias.reference.parity import nchw
from mlx_alias.reference.scoring import TorchScorer
from mlx_alias.search.objective import MaskTarget, ObjectiveConfig, prepare_target
from mlx_alias.search.phase import ids_of
from mlx_alias.search.scorer import DenseTargets, ExactScorer, Scorer
from mlx_alias.search.soft import CompiledGradient, surrogate_state
from mlx_alias.tokenizer import load_tokenizer

from baselines import ReencodingScorer
from timing import Peaks, median_seconds, process_peak_rss_gb
from torch_surrogate import torch_surrogate

CANDIDATE_LENGTH = 3  # content tokens per random candidate
# the objective both sides time; the surrogate's temperatures change no timing
TIMED = ObjectiveConfig(temperature=0.05, mask_temperature=1.0)


# --- inputs ------------------------------------------------------------------------------------


def random_targets(paths: list[Path], size: int, seed: int) -> list[MaskTarget]:
    """1-3 random boxes per image as instance masks at the image's own size (every fourth image
    a negative), brought to the model's mask resolution as the search brings its targets."""
    rng = np.random.default_rng(seed)
    targets = []
    for i, path in enumerate(paths):
        height, width = load_image(path).shape[:2]
        count = 0 if i % 4 == 3 else int(rng.integers(1, 4))
        masks = np.zeros((count, height, width), bool)
        for mask in masks:
            y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[y0 : y0 + rng.integers(height // 8, height // 2), x0 : x0 + rng.integers(width // 8, width // 2)] = (
                True
            )
        targets.append(prepare_target(masks, np.zeros((height, width), bool), size))
    return targets


def random_candidates(count: int, seed: int) -> np.ndarray:
    """Framed token rows [count, context] of random content ids."""
    tokenizer = load_tokenizer()
    rng = np.random.default_rng(seed)
    return ids_of(
        tokenizer, [tuple(int(i) for i in rng.integers(1, tokenizer.sot_id, CANDIDATE_LENGTH)) for _ in range(count)]
    )


# --- the two sides -----------------------------------------------------------------------------


def exact_stage(scorer: ExactScorer, ids: np.ndarray, repeats: int) -> dict[str, Any]:
    """Every candidate on every image of ``scorer``, batched: the time and the scores."""
    seconds, scores = median_seconds(lambda: scorer.exact(ids), repeats)
    return {
        "exact_s_per_call": seconds,
        "evals_per_s": len(ids) * scorer.images / seconds,
        "exact_scores": [s.score for s in scores],
    }


def measure_mlx(
    model, paths: list[Path], targets: list[MaskTarget], ids: np.ndarray, args: argparse.Namespace, peaks: Peaks
) -> dict[str, Any]:
    size, config = model.cfg.vision.image_size, TIMED
    pixels = mx.array(preprocess_batch([load_image(p) for p in paths], size))
    out: dict[str, Any] = {}
    with peaks.mlx_stage("encode"):
        seconds, features = median_seconds(lambda: model.encode_image(pixels), args.repeats)
    out["encode_s_per_image"] = seconds / len(paths)
    if features.levels[0].shape[1] != targets[0].crowd.shape[0]:
        raise RuntimeError(f"mask resolution {features.levels[0].shape[1]}, targets {targets[0].crowd.shape}")
    scorer = Scorer(model, features, targets, config, args.batch)
    with peaks.mlx_stage("exact"):
        out.update(exact_stage(scorer, ids, args.repeats))

    turn = iter(range(1 << 30))

    def seed_style() -> None:
        c = next(turn)
        ReencodingScorer(model, [paths[c % len(paths)]], [targets[c % len(paths)]], config).exact(
            ids[c % len(ids) :][:1]
        )

    with peaks.mlx_stage("seed_style"):
        out["seed_style_s_per_eval"] = median_seconds(seed_style, args.repeats, warm_up=False)[0]

    embeddings = model.token_embeddings(mx.array(ids[:1]))
    padding = mx.array(ids[:1] == 0)
    step = CompiledGradient(lambda e: scorer.surrogate(e, padding), lambda: [surrogate_state(scorer)])  # as the phase
    with peaks.mlx_stage("soft_step"):
        out["soft_step_s"], (value, _) = median_seconds(lambda: step(embeddings), args.repeats)
    out["soft_value"] = float(value)
    return out


def measure_torch(
    reference: torch.nn.Module,
    paths: list[Path],
    targets: list[MaskTarget],
    ids: np.ndarray,
    args: argparse.Namespace,
    device: torch.device,
    autocast: Callable[[], Any],
    peaks: Peaks,
    size: int,
) -> dict[str, Any]:
    config = TIMED
    pixels = nchw(preprocess_batch([load_image(p) for p in paths], size)).to(device)
    out: dict[str, Any] = {}
    with torch.no_grad(), autocast(), peaks.torch_stage("encode"):
        seconds = median_seconds(lambda: runners.image_features(reference, pixels), args.repeats)[0]
    out["encode_s_per_image"] = seconds / len(paths)
    with autocast():
        scorer = TorchScorer(reference, paths, targets, config, args.batch, size)
        with peaks.torch_stage("exact"):
            out.update(exact_stage(scorer, ids, args.repeats))

        turn = iter(range(1 << 30))

        def seed_style() -> None:
            c = next(turn)
            TorchScorer(reference, [paths[c % len(paths)]], [targets[c % len(paths)]], config, 1, size).exact(
                ids[c % len(ids) :][:1]
            )

        with peaks.torch_stage("seed_style"):
            out["seed_style_s_per_eval"] = median_seconds(seed_style, args.repeats, warm_up=False)[0]

    reference.requires_grad_(False)  # the gradient with respect to the input embeddings only, as MLX takes it
    dense = DenseTargets.of(targets)
    masks, valid, keep, crowd = (
        torch.from_numpy(np.array(a)).to(device) for a in (dense.masks, dense.valid, dense.keep, dense.crowd)
    )
    with torch.no_grad():
        embeddings = runners.token_embeddings(reference, torch.from_numpy(ids[:1]))
    padding = torch.from_numpy(ids[:1] == 0)
    images = len(paths)

    def step() -> tuple[float, torch.Tensor]:
        e = embeddings.detach().clone().requires_grad_(True)
        with autocast():
            text = runners.text_features_from_embeddings(reference, e, padding)
            text = runners.ReferenceText(text.memory.expand(images, -1, -1), text.padding.expand(images, -1))
            grounded = runners.ground(reference, scorer.features, text, torch.arange(images))
            value = torch_surrogate(
                grounded["scores"].float(), grounded["pred_masks"].float(), masks, valid, keep, crowd, config
            )
        value.backward()
        return float(value.detach()), e.grad

    with peaks.torch_stage("soft_step"):
        out["soft_step_s"], (out["soft_value"], _) = median_seconds(step, args.repeats)
    return out


# --- report ------------------------------------------------------------------------------------

STAGES = [  # key, label, larger is better
    ("encode_s_per_image", "image encode, s per image", False),
    ("evals_per_s", "exact evaluations per second", True),
    ("seed_style_s_per_eval", "seed-style, s per evaluation", False),
    ("soft_step_s", "soft-prompt step, s", False),
]


def table(result: dict[str, Any]) -> str:
    mlx_side, torch_side = result["mlx"], result["torch"]
    lines = [
        f"preset {result['preset']}, {result['images']} images, {result['candidates']} candidates, "
        f"batch {result['batch']} pairs, repeats {result['repeats']}",
        f"MLX {result['mlx_version']} on {result['mlx_device']} in {result['mlx_dtype']}; "
        f"torch {result['torch_version']} on {result['torch_device']} in {result['torch_dtype']}",
        "",
        f"{'':32s} {'MLX':>12s} {'torch':>12s} {'MLX speed / torch':>18s}",
    ]
    for key, label, larger_better in STAGES:
        a, b = mlx_side[key], torch_side[key]
        lines.append(f"{label:32s} {a:12.4g} {b:12.4g} {(a / b if larger_better else b / a):17.3g}x")
    lines.append(
        f"{'exact vs seed-style (x faster)':32s} {mlx_side['exact_vs_seed_style']:12.3g} "
        f"{torch_side['exact_vs_seed_style']:12.3g}"
    )
    lines.append("")
    lines.append(
        f"peak memory: MLX allocator {result['peak_mem_gb']:.3g} GB "
        f"({', '.join(f'{k} {v:.3g}' for k, v in result['mlx_peak_mem_gb_by_stage'].items())})"
    )
    if result["torch_peak_mem_gb"] is not None:
        lines.append(f"             torch CUDA allocator {result['torch_peak_mem_gb']:.3g} GB")
    lines.append(
        f"             process peak RSS {result['process_peak_rss_gb_through_torch']:.3g} GB through "
        f"the torch stages (model building included), {result['process_peak_rss_gb']:.3g} GB in all"
    )
    lines.append(
        f"exact scores, max |MLX - torch| {result['exact_score_max_abs_diff']:.3g}; "
        f"soft value MLX {mlx_side['soft_value']:.6g}, torch {torch_side['soft_value']:.6g}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--batch", type=int, default=8, help="(candidate, image) pairs per grounding call")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=None, help="candidates per exact call (default: --batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min(args.batch, args.images, args.repeats, args.candidates or 1) < 1:
        parser.error("--batch, --images, --candidates and --repeats must be positive")

    cfg = PRESETS[args.preset]()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    half = args.dtype != "float32" and device.type == "cuda"
    torch_dtype = args.dtype if half else "float32"

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=getattr(torch, args.dtype)) if half else contextlib.nullcontext()

    peaks = Peaks()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = build_model(cfg, seed=args.seed, device=str(device))
        if args.preset == "tiny":
            shape_tiny(reference, args.seed)  # the tiny preset as init, the demo and search_quality.py make it
        convert(save_checkpoint(reference, cfg, root / "sam3"), root / "mlx", args.dtype)
        paths = synthetic_images(root / "images", args.images, args.seed)
        mask_size = int(cfg.vision.grid * cfg.detector.neck_scales[0])  # the first neck level's, as the masks'
        targets = random_targets(paths, mask_size, args.seed)
        ids = random_candidates(args.candidates or args.batch, args.seed)

        # One side at a time in memory: the full size's soft step peaks above 10 GB on each side.
        torch_side = measure_torch(reference, paths, targets, ids, args, device, autocast, peaks, cfg.vision.image_size)
        rss_torch = process_peak_rss_gb()
        del reference
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        mlx_side = measure_mlx(load_model(root / "mlx"), paths, targets, ids, args, peaks)

    for side in (mlx_side, torch_side):
        side["exact_vs_seed_style"] = side["evals_per_s"] * side["seed_style_s_per_eval"]
    diff = float(np.max(np.abs(np.subtract(mlx_side.pop("exact_scores"), torch_side.pop("exact_scores")))))
    result = {
        "preset": args.preset,
        "dtype": args.dtype,
        "batch": args.batch,
        "images": args.images,
        "candidates": len(ids),
        "repeats": args.repeats,
        "mlx_evals_per_s": mlx_side["evals_per_s"],
        "torch_evals_per_s": torch_side["evals_per_s"],
        "ratio": mlx_side["evals_per_s"] / torch_side["evals_per_s"],
        "peak_mem_gb": max(peaks.mlx.values()),
        "mlx_peak_mem_gb_by_stage": peaks.mlx,
        "torch_peak_mem_gb": max(peaks.torch.values()) if peaks.torch else None,
        "torch_peak_mem_gb_by_stage": peaks.torch or None,
        "process_peak_rss_gb": process_peak_rss_gb(),
        "process_peak_rss_gb_through_torch": rss_torch,
        "exact_score_max_abs_diff": diff,
        "mlx": mlx_side,
        "torch": torch_side,
        "mlx_version": mx.__version__,
        "mlx_device": str(mx.default_device()),
        "mlx_dtype": args.dtype,
        "torch_version": torch.__version__,
        "torch_device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch_dtype": torch_dtype if not half else f"autocast {torch_dtype}",
        "torch_threads": torch.get_num_threads(),
        "tf32": False,  # both sides exact float32, as parity sets them (reference.compat.exact_fp32)
    }
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
