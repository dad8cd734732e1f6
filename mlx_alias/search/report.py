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
from mlx_alias.data.split import caution
from mlx_alias.files import atomic_write, atomic_write_bytes
from mlx_alias.model.sam3 import Sam3
from mlx_alias.prediction import Instance, overlay, predict
from mlx_alias.tokenizer import load_tokenizer

from .alias_file import Alias, SearchResult
from .phase import ids_of

OVERLAYS_PER_CATEGORY = 3
CURVE_SIZE = (480, 260)


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
        return (
            pad + (x - xs.min()) / span_x * (width - 2 * pad),
            height - pad - (y - low) / (high - low) * (height - 2 * pad),
        )

    draw.rectangle((pad, pad, width - pad, height - pad), outline="gray")
    draw.line(
        [point(x, y) for x, y in zip(xs, ys)] if len(xs) > 1 else [point(xs[0], ys[0])] * 2, fill=(0, 90, 200), width=2
    )
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):  # ticks and their values on both axes
        x, y = point(xs.min() + fraction * span_x, low + fraction * (high - low))
        draw.line((x, height - pad, x, height - pad + 4), fill="gray")
        draw.text((x - 10, height - pad + 6), f"{int(xs.min() + fraction * span_x)}", fill="black")
        draw.line((pad - 4, y, pad, y), fill="gray")
        draw.text((2, y - 5), f"{low + fraction * (high - low):.2f}", fill="black")
    draw.text((pad, 8), "best training score", fill="black")  # the y axis
    draw.text((width // 2 - 90, height - 14), "evaluations (candidate x training image)", fill="black")
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _truth(dataset: Dataset, image_id: int, category_id: int) -> list[Instance]:
    masks = dataset.targets(image_id, category_id).masks
    return [Instance(1.0, _box(m), m) for m in masks]


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else (0, 0, 0, 0)


def overlays(model: Sam3, dataset: Dataset, alias: Alias, threshold: float, folder: Path) -> list[Path]:
    """[truth | natural label | alias] for the first holdout images (positives first)."""
    split = alias.split
    chosen = (split.holdout_positives + split.holdout_negatives)[:OVERLAYS_PER_CATEGORY]
    tokenizer = load_tokenizer()
    alias_ids = ids_of(tokenizer, [alias.tokens])
    name = alias.name
    written = []
    for image_id in chosen:
        rgb = dataset.image(image_id)
        panels = [overlay(rgb, _truth(dataset, image_id, alias.category_id))]
        if name:
            panels.append(overlay(rgb, predict(model, rgb, tokenizer(name), threshold)))
        panels.append(overlay(rgb, predict(model, rgb, alias_ids, threshold)))
        sheet = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
        for i, panel in enumerate(panels):
            sheet.paste(panel, (i * panel.width, 0))
        path = folder / f"category-{alias.category_id}-image-{image_id}.png"
        atomic_write(path, lambda tmp, sheet=sheet: sheet.save(tmp, format="PNG"))
        written.append(path)
    return written


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_text(text: str) -> str:
    """Text as it can stand in a markdown table: control and format characters written as JSON
    escapes (a raw carriage return breaks the table), markdown's own characters backslashed."""
    visible = "".join(
        json.dumps(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text
    )
    return re.sub(r"([\\`*_{}\[\]<>()#+\-.!|~])", r"\\\1", visible)


def apply_command(alias: Alias) -> str:
    return f"mlx-alias segment --weights WEIGHTS --image IMAGE --aliases aliases.json --category {alias.category_id}"


def apply_hint(alias: Alias) -> str:
    """How to apply an alias: by the alias file and its category, or by its tokens."""
    tokens = ",".join(str(t) for t in alias.tokens)
    how = f"`{apply_command(alias)}` (or `--tokens {tokens}`)"
    if alias.roundtrip:
        return f"Apply: {how}; its text re-tokenizes to the same tokens, so it can be typed as a prompt too."
    return f"Apply: {how}. Its text does not re-tokenize to these tokens: apply it by its tokens, not its text."


def _label(category_id: int, name: str | None) -> str:
    return f"category {category_id}" + (f" ('{markdown_text(name)}')" if name else "")


def _summary(result: SearchResult) -> list[str]:
    """One row per category: the label and its holdout score, the alias and its scores, how to apply."""
    lines = [
        "| category | label | label holdout | alias | tokens | re-tokenizes | alias train | alias holdout |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in result.aliases:
        base = a.baseline
        lines.append(
            f"| [{a.category_id}](#category-{a.category_id}) | {markdown_text(a.name or '')} | "
            f'{_score(base.holdout_score) if base else ""} | "{markdown_text(a.text)}" | '
            f"{','.join(map(str, a.tokens))} | {'yes' if a.roundtrip else 'no: by tokens'} | "
            f"{_score(a.train_score)} | {_score(a.holdout_score)} |"
        )
    return lines


def write_report(model: Sam3, dataset: Dataset, result: SearchResult, run_dir: Path) -> Path:
    """``report.md`` and its ``figures/``: a summary table, then a section per category."""
    threshold = result.objective.threshold
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    lines = [
        "# Alias search report",
        "",
        f"Dataset {markdown_text(result.dataset.get('path', ''))}; objective threshold {threshold} (the "
        "IoU-weighted F-score on positive images minus half the false-positive rate on negatives). Apply an "
        "alias by its tokens: `mlx-alias segment --weights WEIGHTS --image IMAGE --aliases aliases.json "
        "--category ID`.",
        "",
        *_summary(result),
        "",
    ]
    if any("\ufffd" in a.text for a in result.aliases):
        lines += ["In alias texts, \ufffd stands for token bytes that are not a whole UTF-8 character.", ""]
    for alias in result.aliases:
        cid = alias.category_id
        curve = figures / f"category-{cid}-curve.png"
        curve_png(list(alias.curve), curve)
        lines += [
            f'<a id="category-{cid}"></a>',
            "",
            f"## {_label(cid, alias.name)}",
            "",
            "| prompt | tokens | re-tokenizes | train | holdout |",
            "|---|---|---|---|---|",
            f'| alias "{markdown_text(alias.text)}" | {list(alias.tokens)} | {"yes" if alias.roundtrip else "no"} | '
            f"{_score(alias.train_score)} | {_score(alias.holdout_score)} |",
        ]
        if len(alias.lengths) > 1:  # the best alias of each searched length
            lines += [
                f'| {b.length}-token best "{markdown_text(b.text)}" | {list(b.tokens)} | | {_score(b.train_score)} | |'
                for b in alias.lengths
            ]
        if alias.baseline:
            base = alias.baseline
            lines.append(
                f'| natural label "{markdown_text(base.text)}" | | | {_score(base.train_score)} | '
                f"{_score(base.holdout_score)} |"
            )
        lines += ["", apply_hint(alias)]
        if warning := caution(alias.split):
            lines += ["", f"Caution: {warning}."]
        lines += [
            "",
            f"{alias.evaluations} evaluations. Best training score over the search:",
            "",
            f"![curve]({curve.relative_to(run_dir)})",
            "",
        ]
        panels = "ground truth | natural label | alias" if alias.name else "ground truth | alias"
        for path in overlays(model, dataset, alias, threshold, figures):
            lines += [f"Holdout image ({panels}):", "", f"![overlay]({path.relative_to(run_dir)})", ""]
    if result.skipped:
        lines += ["## Skipped categories", ""]
        lines += [f"- {_label(s.category_id, s.name)}: {s.reason}." for s in result.skipped]
        lines.append("")
    report = run_dir / "report.md"
    atomic_write_bytes(report, ("\n".join(lines) + "\n").encode())
    return report
