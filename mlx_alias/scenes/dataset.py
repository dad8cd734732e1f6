"""COCO datasets of the scene world, from the renderer's ground truth: one category per concept,
named by its label, each object it covers one instance with its exact mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mlx_alias.files import atomic_directory

from .concepts import Concept
from .world import SIZE, Scene, scene

STREAM = 7  # keeps dataset scenes apart from training's ([seed, step]) and validation's streams


def scenes(count: int, seed: int, first: int = 0) -> list[Scene]:
    """Scenes ``first`` to ``first + count - 1`` of a seed's dataset stream: a benchmark's unseen
    test scenes are the same stream's later ones."""
    rng = np.random.default_rng([seed, STREAM])
    drawn = [scene(rng) for _ in range(first + count)]
    return drawn[first:]


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def coco(drawn: list[Scene], concepts: tuple[Concept, ...] | list[Concept], names: list[str]) -> dict:
    """The COCO annotation object for scenes saved under ``names``: category ``k + 1`` is
    ``concepts[k]``, labelled with its label."""
    data = {
        "images": [],
        "annotations": [],
        "categories": [{"id": k + 1, "name": c.label} for k, c in enumerate(concepts)],
    }
    for image_id, (sc, name) in enumerate(zip(drawn, names), start=1):
        data["images"].append({"id": image_id, "file_name": name, "height": SIZE, "width": SIZE})
        for k, concept in enumerate(concepts):
            for thing, mask in zip(sc.things, sc.masks):
                if not concept.covers(thing):
                    continue
                ys, xs = np.nonzero(mask)
                data["annotations"].append(
                    {
                        "id": len(data["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": k + 1,
                        "segmentation": _rle(mask),
                        "area": int(mask.sum()),
                        "iscrowd": 0,
                        "bbox": [
                            int(xs.min()),
                            int(ys.min()),
                            int(xs.max() - xs.min() + 1),
                            int(ys.max() - ys.min() + 1),
                        ],
                    }
                )
    return data


def write_dataset(
    out: Path,
    concepts: tuple[Concept, ...] | list[Concept],
    count: int,
    seed: int,
    first: int = 0,
    overwrite: bool = False,
) -> Path:
    """``out/annotations.json`` and ``out/images/scene-NNNN.png`` for scenes ``first`` to
    ``first + count - 1`` of the seed's stream; written whole or not at all."""
    drawn = scenes(count, seed, first)
    names = [f"scene-{first + i:04d}.png" for i in range(count)]
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "images").mkdir()
        for sc, name in zip(drawn, names):
            Image.fromarray(sc.image).save(staging / "images" / name)
        (staging / "annotations.json").write_text(json.dumps(coco(drawn, concepts, names)) + "\n")
    return out / "annotations.json"
