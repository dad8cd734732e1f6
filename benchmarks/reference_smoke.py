"""Build the reference at a preset on the auto-selected device and time one image + a prompt
batch. Prints one JSON line. Usage: python benchmarks/reference_smoke.py [--preset full] [--prompts 4]"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

warnings.filterwarnings("ignore")

from mlx_alias.config import PRESETS  # noqa: E402
from mlx_alias.reference.build import build_model, parameter_count  # noqa: E402
from mlx_alias.reference.runners import ground, image_features, text_features_from_ids  # noqa: E402
from mlx_alias.tokenizer import load_tokenizer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    cfg = PRESETS[args.preset]()
    start = time.perf_counter()
    model = build_model(cfg, seed=0, device=args.device)
    device = next(model.parameters()).device
    build_s = time.perf_counter() - start
    size = cfg.vision.image_size
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ids = torch.from_numpy(load_tokenizer()([f"prompt number {i}" for i in range(args.prompts)])).long()
    timings = {}
    with torch.no_grad():
        for _ in range(2):  # the second pass is the timed one
            _sync(device)
            t0 = time.perf_counter()
            features = image_features(model, images)
            _sync(device)
            t1 = time.perf_counter()
            text = text_features_from_ids(model, ids)
            _sync(device)
            t2 = time.perf_counter()
            out = ground(model, features, text)
            _sync(device)
            t3 = time.perf_counter()
            timings = {"image_s": t1 - t0, "text_s": t2 - t1, "ground_s": t3 - t2}
    print(
        json.dumps(
            {
                "preset": args.preset,
                "device": str(device),
                "parameters": parameter_count(model),
                "build_s": round(build_s, 2),
                **{k: round(v, 4) for k, v in timings.items()},
                "prompts": args.prompts,
                "mask_shape": list(out["pred_masks"].shape),
                "finite": bool(all(torch.isfinite(v).all() for v in out.values())),
                "max_score": float(out["scores"].max()),
            }
        )
    )


if __name__ == "__main__":
    main()
