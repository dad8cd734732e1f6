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

For random models, whose scores are not calibrated, ``planting_rule`` picks the threshold
and margin, and ``synthetic_images`` draws pictures to plant on: the planted benchmark of the
tests and ``benchmarks/search_quality.py``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from PIL import Image, ImageDraw

from .files import atomic_directory, check_target
from .image import load_image, preprocess
from .model.sam3 import Sam3
from .prediction import Prompt, instances, rle
from .progress import tracked

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CATEGORY_ID = 1
MAX_INSTANCES = 5  # per image, best first
TOP_FRACTION = 0.1  # of the hidden prompt's queries that count as instances
# The threshold's gap is a few hundredths of a spread wide and unseen images fill it, so queries
# this close to it are planted as crowd regions rather than decided by a hair.
MARGIN_SPREADS = 0.1


def planting_rule(model, paths: list[Path], ids: np.ndarray, margin_spreads: float = 0.0) -> tuple[float, float]:
    """The threshold and margin at which to plant the prompt ``ids`` on the images ``paths``.

    Random weights are not calibrated (sam3's 0.5 is for trained ones): the threshold sits in
    the widest gap between the hidden prompt's sorted official scores over the images, looked
    for around the 90th percentile (about 2 of 20 queries per image are instances). A plain
    percentile lands inside a dense run of scores, where whether a query counts is noise; in a
    gap, planted instances clear it by a margin. The margin (``plant``'s: the queries within it
    of the threshold become crowd regions) is ``margin_spreads`` times the standard deviation of
    those scores: the gap is narrow (a few hundredths of it) and unseen images fill it. Plant
    and search use the same threshold."""
    text = model.encode_text(mx.array(ids))
    scores = []
    for path in paths:
        features = model.encode_image(mx.array(preprocess(load_image(path), model.cfg.vision.image_size)[None]))
        scores.append(np.array(model.ground(features, text).scores[0]))
    return gap_threshold(scores, TOP_FRACTION, MAX_INSTANCES), margin_spreads * float(np.std(np.concatenate(scores)))


def gap_threshold(scores: list[np.ndarray], fraction: float, max_instances: int) -> float:
    """The midpoint of the widest gap between consecutive sorted scores of all images, among
    the cuts that keep more than half and at most one and a half times ``fraction`` of the
    scores above them, and at most ``max_instances`` of any one image's: ``plant`` keeps that
    many per image, so more would make the hidden prompt's own extra queries false positives.
    Raises ValueError when no cut qualifies."""
    ranked = np.sort(np.concatenate(scores))[::-1]
    lo, hi = int(len(ranked) * fraction * 0.5), int(len(ranked) * fraction * 1.5)
    cuts = (ranked[lo:hi] + ranked[lo + 1 : hi + 1]) / 2
    most = np.array([max(int((image > cut).sum()) for image in scores) for cut in cuts])  # on one image
    gaps = np.where(most <= max_instances, ranked[lo:hi] - ranked[lo + 1 : hi + 1], -np.inf)
    if not np.isfinite(gaps).any():
        raise ValueError(
            f"the hidden prompt's scores leave no cut with {fraction * 50:.0f}-{fraction * 150:.0f}% "
            f"of queries above it and at most {max_instances} on any image; try another seed"
        )
    return float(cuts[int(np.argmax(gaps))])


def synthetic_images(folder: Path, count: int, seed: int = 0, first: int = 0) -> list[Path]:
    """Textured backgrounds with a few filled shapes, of assorted sizes, as PNG files: images
    ``first`` to ``first + count - 1`` of the seed's stream, so that later images of a stream
    can be drawn apart from its first ones (a benchmark's unseen test images)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first + count):
        height, width = int(rng.integers(96, 200)), int(rng.integers(96, 200))
        y, x = np.mgrid[0:height, 0:width]
        phase = rng.uniform(0, 6.28, 3)
        background = np.stack(
            [127 + 100 * np.sin(x / rng.uniform(5, 30) + phase[c] + y / rng.uniform(8, 40)) for c in range(3)], axis=-1
        )
        picture = Image.fromarray(background.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            x1, y1 = x0 + int(rng.integers(15, width // 2 + 16)), y0 + int(rng.integers(15, height // 2 + 16))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        if i < first:
            continue
        paths.append(folder / f"synthetic-{i:02d}.png")
        picture.save(paths[-1])
    return paths


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


def plant(
    model: Sam3,
    images: Path,
    prompt: Prompt,
    out: Path,
    *,
    threshold: float = 0.5,
    margin: float = 0.0,
    max_instances: int = MAX_INSTANCES,
    name: str | None = None,
    overwrite: bool = False,
) -> PlantReport:
    """Write ``out/annotations.json``, ``out/images/`` (copies) and ``out/plant.json`` (the
    hidden prompt and the rule, for benchmarks; a search never reads it)."""
    check_target(out, overwrite=overwrite)
    files = image_files(images)
    text = model.encode_text(mx.array(prompt.ids))
    coco = {"images": [], "annotations": [], "categories": [{"id": CATEGORY_ID, **({"name": name} if name else {})}]}
    positives = crowd_only = 0
    low, high = np.inf, -np.inf  # the hidden prompt's official scores, for a threshold to suggest
    for image_id, path in enumerate(tracked(files, len(files), "planting"), start=1):
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
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_ID,
                    "segmentation": rle(inst.mask),
                    "area": int(inst.mask.sum()),
                    "iscrowd": crowd,
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                    "score": round(inst.score, 4),
                }
            )
    if not positives:
        raise ValueError(
            f"the hidden prompt predicts no instance above the threshold {threshold:g} + margin {margin:g} "
            f"on any of the {len(files)} images (its official scores range from {low:.4g} to {high:.4g}); "
            f"try a --threshold below {high - margin:.4g}"
        )
    hidden = {
        "prompt": prompt.text,
        "tokens": prompt.content,
        "threshold": threshold,
        "margin": margin,
        "max_instances": max_instances,
    }
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "images").mkdir()
        for path in files:
            shutil.copyfile(path, staging / "images" / path.name)
        (staging / "annotations.json").write_text(json.dumps(coco) + "\n")
        (staging / "plant.json").write_text(json.dumps(hidden, indent=1) + "\n")
    crowd_regions = sum(a["iscrowd"] for a in coco["annotations"])
    return PlantReport(len(files), positives, len(coco["annotations"]) - crowd_regions, crowd_regions, crowd_only)
