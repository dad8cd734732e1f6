"""``mlx-alias plant``: a COCO dataset whose masks are what the model predicts for a hidden
prompt. It is the benchmark of the search itself: a good search finds an alias that scores
close to the hidden prompt on the holdout images.

Rule: on each image, the instances are the hidden prompt's queries whose official score
exceeds ``threshold`` (the objective's, 0.5 by default) by more than ``margin`` (0 by
default), best first, at most ``max_instances`` (5), with masks as ``segment`` makes them
(bilinear from the mask resolution, cut at 0.5). The queries within ``margin`` of the
threshold, above or below, are written as crowd regions (``iscrowd`` 1): the hidden prompt
decides them by so little that any other prompt would be judged on noise there, so the
objective neither rewards nor penalises a prediction in them, as COCO's evaluation treats
crowds. An image with neither is a negative; one with crowd regions only is neither positive
nor negative, and no split holds it. The hidden prompt's own score on the dataset is
therefore 1 wherever it predicted at most ``max_instances``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from .files import atomic_directory, check_target
from .image import load_image, preprocess
from .model.sam3 import Sam3
from .postprocess import instances
from .progress import progress
from .segment import Prompt, rle

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CATEGORY_ID = 1
MAX_INSTANCES = 5  # per image, best first


@dataclass
class PlantReport:
    images: int
    positives: int
    instances: int
    crowd_regions: int
    crowd_only: int  # images with crowd regions and no instance: in no split


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"--images must be a folder of images, got {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def plant(model: Sam3, images: Path, prompt: Prompt, out: Path, *, threshold: float = 0.5, margin: float = 0.0,
          max_instances: int = MAX_INSTANCES, name: str | None = None, overwrite: bool = False) -> PlantReport:
    """Write ``out/annotations.json``, ``out/images/`` (copies) and ``out/plant.json`` (the
    hidden prompt and the rule, for benchmarks; a search never reads it)."""
    check_target(out, overwrite=overwrite)
    files = image_files(images)
    text = model.encode_text(mx.array(prompt.ids))
    coco = {"images": [], "annotations": [], "categories": [{"id": CATEGORY_ID, **({"name": name} if name else {})}]}
    positives = crowd_only = 0
    low, high = np.inf, -np.inf  # the hidden prompt's official scores, for a threshold to suggest
    for image_id, path in enumerate(progress(files, len(files), "planting"), start=1):
        rgb = load_image(path)
        height, width = rgb.shape[:2]
        features = model.encode_image(mx.array(preprocess(rgb, model.cfg.vision.image_size)[None]))
        grounded = model.ground(features, text)
        scores = np.array(grounded.scores[0])
        low, high = min(low, float(scores.min())), max(high, float(scores.max()))
        found = instances(grounded.scores[0], grounded.boxes[0], grounded.masks[0], height, width, threshold - margin)
        found = [inst for inst in found if inst.mask.any()]
        clear = [inst for inst in found if inst.score > threshold + margin][:max_instances]
        crowds = [inst for inst in found if inst.score <= threshold + margin]
        coco["images"].append({"id": image_id, "file_name": path.name, "height": height, "width": width})
        positives += bool(clear)
        crowd_only += bool(crowds) and not clear
        for inst, crowd in [(inst, 0) for inst in clear] + [(inst, 1) for inst in crowds]:
            ys, xs = np.nonzero(inst.mask)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": CATEGORY_ID,
                "segmentation": rle(inst.mask), "area": int(inst.mask.sum()), "iscrowd": crowd,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "score": round(inst.score, 4),
            })
    if not positives:
        raise ValueError(f"the hidden prompt predicts no instance above the threshold {threshold:g} + margin {margin:g} "
                         f"on any of the {len(files)} images (its official scores range from {low:.4g} to {high:.4g}); "
                         f"try a --threshold below {high - margin:.4g}")
    hidden = {"prompt": prompt.text, "tokens": prompt.content, "threshold": threshold, "margin": margin,
              "max_instances": max_instances}
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "images").mkdir()
        for path in files:
            shutil.copyfile(path, staging / "images" / path.name)
        (staging / "annotations.json").write_text(json.dumps(coco) + "\n")
        (staging / "plant.json").write_text(json.dumps(hidden, indent=1) + "\n")
    crowd_regions = sum(a["iscrowd"] for a in coco["annotations"])
    return PlantReport(len(files), positives, len(coco["annotations"]) - crowd_regions, crowd_regions, crowd_only)
