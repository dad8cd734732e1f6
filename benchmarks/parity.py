"""Parity of the MLX port with the PyTorch reference, at any size, with each side's time.

    python benchmarks/parity.py --preset full            # random full-size SAM3, fp32
    python benchmarks/parity.py --preset tiny --json

Builds a seeded random model through the reference (as ``mlx-alias init`` does), writes
``sam3.pt``, converts it (as ``mlx-alias convert`` does), then runs one synthetic image and a
batch of prompts through both sides. Prints the errors, the tolerances, and whether they hold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from mlx_alias.config import PRESETS
from mlx_alias.reference.parity import backbone_parity, random_pair
from mlx_alias.tokenizer import load_tokenizer

PROMPTS = ["a photo of a cat", "zebra", "striped traffic cone near the curb", "", "red car"]

# fp32 bounds: relative L2 <= 1e-4 per output; gradient cosine >= 0.9999, rel <= 1e-3 (docs/parity.md).
TOLERANCES = {
    ("image", "image_features_rel_err"): 1e-4,
    ("text", "text_features_rel_err"): 1e-4,
    ("text", "embedding_path_rel_err"): 1e-4,
    ("gradient", "grad_rel_err"): 1e-3,
}


def synthetic_pixels(size: int, seed: int) -> np.ndarray:
    """A smooth image with edges, in the model's [-1, 1] input range, [1, S, S, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in rng.uniform(0.5, 4, (3, 3))]
    image = np.stack(channels, axis=-1)
    image[(x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.05] = rng.uniform(-1, 1, 3)
    return image[None].astype(np.float32)


def check(results: dict) -> list[str]:
    failures = [
        f"{part}.{key} = {results[part][key]:.3g} > {bound:g}"
        for (part, key), bound in TOLERANCES.items()
        if results[part][key] > bound
    ]
    if results["gradient"]["grad_cosine"] < 0.9999:
        failures.append(f"gradient.grad_cosine = {results['gradient']['grad_cosine']:.6f} < 0.9999")
    if results["text"]["padding_mismatches"]:
        failures.append("text padding masks differ")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    cfg = PRESETS[args.preset]()
    with tempfile.TemporaryDirectory() as workdir:
        reference, model = random_pair(cfg, args.seed, Path(workdir))
        pixels = synthetic_pixels(cfg.vision.image_size, args.seed)
        ids = np.array(load_tokenizer()(PROMPTS))
        results = backbone_parity(reference, model, pixels, ids)
    failures = check(results)
    results["passed"] = not failures
    if args.json:
        print(json.dumps(results))
    else:
        for part in ("image", "text", "gradient"):
            for key, value in results[part].items():
                print(f"{part:9s} {key:24s} {value:.3g}")
        print("passed" if not failures else "FAILED: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
