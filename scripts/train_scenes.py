"""Train the tiny SAM3 of the scene world and write it as a checkpoint.

    python scripts/train_scenes.py --out runs/train [--steps 4000] [--seed 0] [--hours 2] [--until 3000]
        [--checkpoint OUT_DIR] [--format hf] [--init-from runs/earlier --seed 1]

Needs the training extra (``pip install -e '.[train]'``: the reference path plus what
``sam3.train`` imports). Training is resumable: run the same command again and it continues
from ``--out``'s last checkpoint (every 100 steps), seeing exactly the data an uninterrupted
run would; ``--hours`` stops it after that much wall-clock, ``--until`` after that step, to
go on later. When the steps are done, ``--checkpoint`` receives the trained model through the project's own writer
(``model.safetensors`` in the transformers layout with ``--format hf``, or ``sam3.pt``) and its
``config.json``, ready for ``mlx-alias convert`` (``--dtype float16`` halves it, as shipped),
and ``PROVENANCE.json``: the command, the training settings, the last validation and the
file's sha256. ``--init-from`` starts from another run's last state, or from a checkpoint's
weights (``mlx_alias/assets/scenes-tiny``, the shipped model), with a schedule of its own (a
warm restart, to add steps to a finished run). The learning curve is ``--out/curve.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

import torch

from mlx_alias.config import tiny_config
from mlx_alias.digest import hash_file
from mlx_alias.files import atomic_write_bytes
from mlx_alias.reference.checkpoint import save_checkpoint
from mlx_alias.reference.train import CURVE, TrainConfig, init_source, train


def last_validation(curve: Path) -> dict:
    """The last validation record of a learning curve (the losses left out)."""
    records = [json.loads(line) for line in curve.read_text().splitlines() if "words_median" in line]
    keep = ("step", "words_median", "random_max", "random_median", "either_median")
    prefixes = ("word/", "separation/", "either/")
    return {k: v for k, v in records[-1].items() if k in keep or k.startswith(prefixes)} if records else {}


def write_provenance(path: Path, cfg: TrainConfig, args: argparse.Namespace, curve: Path) -> None:
    """PROVENANCE.json beside the written checkpoint: how to make it again, and its digest."""
    provenance = {
        "command": shlex.join(["python", "scripts/train_scenes.py", *sys.argv[1:]]),
        "seed": cfg.seed,
        "training": dataclasses.asdict(cfg),
        "dtype": args.dtype,
        "validation": last_validation(curve),
        path.name: {"sha256": hash_file(path), "bytes": path.stat().st_size},
    }
    if cfg.init_from:  # what it started from: that run's last state or that checkpoint's weights, by digest
        source = Path(cfg.init_from)
        provenance["init_from"] = {"sha256": hash_file(init_source(source))}
        if (source / "PROVENANCE.json").is_file():  # a checkpoint of this script: how it was made, in turn
            provenance["init_from"]["provenance"] = json.loads((source / "PROVENANCE.json").read_text())
    atomic_write_bytes(path.parent / "PROVENANCE.json", (json.dumps(provenance, indent=2) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="training folder (checkpoint, curve.jsonl)")
    parser.add_argument("--checkpoint", type=Path, help="where to write the trained model once all steps are done")
    parser.add_argument("--format", choices=("hf", "sam3"), default="hf")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="of the written checkpoint")
    parser.add_argument("--hours", type=float, help="stop after this much wall-clock (resume later)")
    parser.add_argument("--until", type=int, help="stop after this step (resume later); the schedule stays --steps'")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    for field in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    model, step = train(args.out, cfg, time_limit=None if args.hours is None else args.hours * 3600, until=args.until)
    if step < cfg.steps:
        print(f"stopped at step {step} of {cfg.steps}: run the same command again to go on")
        return
    if args.checkpoint is not None:
        path = save_checkpoint(model, tiny_config(), args.checkpoint, args.format, getattr(torch, args.dtype))
        write_provenance(path, cfg, args, args.out / CURVE)
        print(f"trained tiny SAM3 ({cfg.steps} steps, seed {cfg.seed}) -> {path}")


if __name__ == "__main__":
    main()
