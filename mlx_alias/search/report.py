"""The run report: ``report.md`` with a table per category, the score curve of its search, and
side-by-side overlays (ground truth | natural label | alias) on a few holdout images."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mlx_alias.data.coco import Dataset
from mlx_alias.data.split import Split, caution
from mlx_alias.files import atomic_write, atomic_write_bytes
from mlx_alias.model.sam3 import Sam3
from mlx_alias.prediction import Instance, overlay, predict
from mlx_alias.tokenizer import load_tokenizer

from .phase import ids_of

OVERLAYS_PER_CATEGORY = 3
CURVE_SIZE = (480, 240)


def curve_png(curve: list[tuple[int, float]], path: Path) -> None:
    """Best training score against evaluations spent, drawn with Pillow (no plotting library)."""
    width, height = CURVE_SIZE
    pad = 36
    picture = Image.new("RGB", CURVE_SIZE, "white")
    draw = ImageDraw.Draw(picture)
    xs = np.array([c[0] for c in curve], float)
    ys = np.array([c[1] for c in curve], float)
    low, high = min(0.0, ys.min()), max(1.0, ys.max())
    span_x = max(xs.max() - xs.min(), 1.0)

    def point(x: float, y: float) -> tuple[float, float]:
        return (pad + (x - xs.min()) / span_x * (width - 2 * pad),
                height - pad - (y - low) / (high - low) * (height - 2 * pad))

    draw.rectangle((pad, pad, width - pad, height - pad), outline="gray")
    draw.line([point(x, y) for x, y in zip(xs, ys)] if len(xs) > 1 else [point(xs[0], ys[0])] * 2,
              fill=(0, 90, 200), width=2)
    draw.text((pad, height - pad + 6), f"{int(xs.min())}", fill="black")
    draw.text((width - pad - 40, height - pad + 6), f"{int(xs.max())} evaluations", fill="black")
    draw.text((4, pad - 4), f"{high:.2f}", fill="black")
    draw.text((4, height - pad - 8), f"{low:.2f}", fill="black")
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _truth(dataset: Dataset, image_id: int, category_id: int) -> list[Instance]:
    masks = dataset.targets(image_id, category_id).masks
    return [Instance(1.0, _box(m), m) for m in masks]


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else (0, 0, 0, 0)


def overlays(model: Sam3, dataset: Dataset, entry: dict, threshold: float, folder: Path) -> list[Path]:
    """[truth | natural label | alias] for the first holdout images (positives first)."""
    split = entry["split"]
    chosen = (split["holdout_positives"] + split["holdout_negatives"])[:OVERLAYS_PER_CATEGORY]
    tokenizer = load_tokenizer()
    alias_ids = ids_of(tokenizer, [tuple(entry["tokens"])])
    name = entry.get("name")
    written = []
    for image_id in chosen:
        rgb = dataset.image(image_id)
        panels = [overlay(rgb, _truth(dataset, image_id, entry["category_id"]))]
        if name:
            panels.append(overlay(rgb, predict(model, rgb, tokenizer(name), threshold)))
        panels.append(overlay(rgb, predict(model, rgb, alias_ids, threshold)))
        sheet = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
        for i, panel in enumerate(panels):
            sheet.paste(panel, (i * panel.width, 0))
        path = folder / f"category-{entry['category_id']}-image-{image_id}.png"
        atomic_write(path, lambda tmp, sheet=sheet: sheet.save(tmp, format="PNG"))
        written.append(path)
    return written


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_text(text: str) -> str:
    """Text as it can stand in a markdown table: control and format characters written as JSON
    escapes (a raw carriage return breaks the table), markdown's own characters backslashed."""
    visible = "".join(json.dumps(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
                      for ch in text)
    return re.sub(r"([\\`*_{}\[\]<>()#+\-.!|~])", r"\\\1", visible)


def apply_hint(entry: dict) -> str:
    """How to apply an alias: by the alias file and its category, or by its tokens."""
    tokens = ",".join(str(t) for t in entry["tokens"])
    how = (f"`mlx-alias segment --weights WEIGHTS --image IMAGE --aliases aliases.json --category {entry['category_id']}` "
           f"(or `--tokens {tokens}`)")
    if entry["roundtrip"]:
        return f"Apply: {how}; its text re-tokenizes to the same tokens, so it can be typed as a prompt too."
    return f"Apply: {how}. Its text does not re-tokenize to these tokens: apply it by its tokens, not its text."


def write_report(model: Sam3, dataset: Dataset, document: dict, run_dir: Path) -> Path:
    """``report.md`` and its ``figures/`` for ``aliases.json``'s contents (``document``)."""
    threshold = document["objective"]["threshold"]
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    lines = ["# Alias search report", "",
             f"Dataset {markdown_text(document['dataset']['path'])}; objective threshold {threshold} (see the README: "
             "IoU-weighted F-score on positive images minus half the false-positive rate on negatives).", ""]
    if any("\ufffd" in e["text"] for e in document["aliases"]):
        lines += ["In alias texts, \ufffd stands for token bytes that are not a whole UTF-8 character.", ""]
    for entry in document["aliases"]:
        cid = entry["category_id"]
        label = f"category {cid}" + (f" ('{markdown_text(entry['name'])}')" if entry.get("name") else "")
        curve = figures / f"category-{cid}-curve.png"
        curve_png(entry["curve"], curve)
        lines += [f"## {label}", "", "| prompt | tokens | re-tokenizes | train | holdout |", "|---|---|---|---|---|",
                  f"| alias \"{markdown_text(entry['text'])}\" | {entry['tokens']} | {'yes' if entry['roundtrip'] else 'no'} | "
                  f"{_score(entry['train_score'])} | {_score(entry['holdout_score'])} |"]
        if len(entry.get("lengths", [])) > 1:  # the best alias of each searched length
            lines += [f"| {e['length']}-token best \"{markdown_text(e['text'])}\" | {e['tokens']} | | "
                      f"{_score(e['train_score'])} | |" for e in entry["lengths"]]
        if entry.get("baseline"):
            base = entry["baseline"]
            lines.append(f"| natural label \"{markdown_text(base['text'])}\" | | | {_score(base['train_score'])} | "
                         f"{_score(base['holdout_score'])} |")
        lines += ["", apply_hint(entry)]
        if warning := caution(Split(**entry["split"])):
            lines += ["", f"Caution: {warning}."]
        lines += ["", f"{entry['evaluations']} evaluations. Best training score over the search:", "",
                  f"![curve]({curve.relative_to(run_dir)})", ""]
        panels = "ground truth | natural label | alias" if entry.get("name") else "ground truth | alias"
        for path in overlays(model, dataset, entry, threshold, figures):
            lines += [f"Holdout image ({panels}):", "", f"![overlay]({path.relative_to(run_dir)})", ""]
    if document["skipped"]:
        lines += ["## Skipped categories", ""]
        lines += [f"- category {s['category_id']}" + (f" ('{markdown_text(s['name'])}')" if s.get("name") else "")
                  + f": {s['reason']}." for s in document["skipped"]]
        lines.append("")
    report = run_dir / "report.md"
    atomic_write_bytes(report, ("\n".join(lines) + "\n").encode())
    return report
