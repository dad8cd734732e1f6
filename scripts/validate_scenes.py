"""Validate training states of the scene world's tiny SAM3 on the same unseen scenes, to compare
runs whose own curves were validated on different streams (each run validates on its seed's).

    python scripts/validate_scenes.py runs/train/train_state.safetensors mlx_alias/assets/scenes-tiny
        [--seeds 0 1 2] [--scenes 24]

Each argument is a training state or a checkpoint folder (the shipped model, or one that
``train_scenes.py --checkpoint`` wrote). For each: each of the model's words as a prompt on the validation scenes of every seed
given (``--scenes`` per seed), its score (the project's objective at sam3's threshold 0.5, mean
over the streams) and its separation (the ROC AUC of the objects it names against the others:
0.5 for a word the model cannot tell apart), the median of the words' scores, and the highest
score of random captions. Needs the training extra (``pip install -e '.[train]'``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from mlx_alias.config import tiny_config
from mlx_alias.reference.build import build_model
from mlx_alias.reference.checkpoint import load_reference
from mlx_alias.reference.train import TrainConfig, load_weights
from mlx_alias.reference.validation import validate
from mlx_alias.scenes.concepts import random_pool
from mlx_alias.search.state import load_state
from mlx_alias.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "models", type=Path, nargs="+", help="train_state.safetensors of a training folder, or a checkpoint folder"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="validation streams (a run's seed)")
    parser.add_argument("--scenes", type=int, default=TrainConfig.validation_scenes, help="scenes per stream")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    tokenizer, config = load_tokenizer(), tiny_config()
    pool = random_pool(tokenizer)
    for path in args.models:
        if path.is_dir():
            model, _ = load_reference(path, "cpu")
            what = "checkpoint"
        else:
            state = load_state(path)
            model = build_model(config, seed=0, device="cpu")
            load_weights(state, model)
            model.eval()
            what = f"step {state['step']}"
        runs = [validate(model, s, args.scenes, tokenizer, pool, config.vision.grid * 4) for s in args.seeds]
        words = [k.removeprefix("word/") for k in runs[0] if k.startswith("word/")]
        score = {w: float(np.mean([r[f"word/{w}"] for r in runs])) for w in words}
        separation = {w: float(np.nanmean([r[f"separation/{w}"] for r in runs])) for w in words}
        streams = ", ".join(f"{r['words_median']:.3f}" for r in runs)
        print(
            f"{path} ({what}), {args.scenes} scenes of each stream {args.seeds}: "
            f"words median {np.median(list(score.values())):.3f} (per stream {streams}), "
            f"random max {max(r['random_max'] for r in runs):.3f}"
        )
        for w in words:
            print(f"  {w:10s} score {score[w]:6.3f}  separation {separation[w]:.3f}")
        for pair in [k.removeprefix("either/") for k in runs[0] if k.startswith("either/")]:
            print(f"  {pair:18s} score {np.mean([r[f'either/{pair}'] for r in runs]):6.3f} (either of two)")


if __name__ == "__main__":
    main()
