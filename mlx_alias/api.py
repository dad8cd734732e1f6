"""The Python API: load a converted SAM3, segment an image with a prompt or an alias, search a
COCO dataset for aliases, read a search's results back.

    import mlx_alias
    model = mlx_alias.load("weights/")
    found = model.segment("photo.jpg", "a red kite")        # .instances: score, box, mask
    run = mlx_alias.find_aliases(model, "data/annotations.json", mlx_alias.SearchConfig(budget=2000))
    run.aliases[0].tokens, run.aliases[0].holdout_score
    model.segment("photo.jpg", run.aliases[0])               # applied by its tokens

The command line is a thin layer over these same calls.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .image import load_image
from .model.sam3 import Sam3
from .model.weights import load_model
from .prediction import Instance, predict, text_ids
from .search.alias_file import Alias, SearchResult, load_alias_file
from .search.cluster import ClusterConfig
from .search.driver import SearchConfig, SearchStep
from .tokenizer import load_tokenizer

DEFAULT_CACHE = Path.home() / ".cache" / "mlx-alias"


@dataclass
class Segmentation:
    """One prompt's instances in one image, best first, at the image's own size."""

    tokens: tuple[int, ...]  # the prompt's content ids
    threshold: float
    height: int
    width: int
    instances: list[Instance]  # .score, .box (x0, y0, x1, y1 in pixels), .mask (bool [height, width])


class Model:
    """An MLX SAM3 loaded from a folder written by ``mlx-alias convert`` (or ``convert``)."""

    def __init__(self, sam3: Sam3, weights: Path):
        self.sam3 = sam3
        self.weights = Path(weights)

    def segment(
        self, image: str | Path | np.ndarray, prompt: str | Sequence[int] | Alias, threshold: float = 0.5
    ) -> Segmentation:
        """Every instance of ``prompt`` (text, content token ids, or a search's ``Alias``, which is
        applied by its tokens) in ``image`` (a path, or an RGB uint8 array)."""
        tokenizer = load_tokenizer()
        if isinstance(prompt, Alias):
            prompt = prompt.tokens
        ids = text_ids(prompt) if isinstance(prompt, str) else tokenizer.from_content_ids(prompt)
        rgb = load_image(image) if isinstance(image, (str, Path)) else image
        found = predict(self.sam3, rgb, ids, threshold)
        row = ids[0].tolist()
        return Segmentation(tuple(row[1 : row.index(tokenizer.eot_id)]), threshold, rgb.shape[0], rgb.shape[1], found)


def load(weights: str | Path, dtype: str | None = None) -> Model:
    """The MLX SAM3 in a converted weights folder, computing in ``dtype`` ("float32",
    "bfloat16", "float16") when given, else in the weights' own."""
    import mlx.core as mx

    sam3 = load_model(Path(weights))
    if dtype is not None:
        sam3.set_dtype(getattr(mx, dtype))
    return Model(sam3, Path(weights))


def find_aliases(
    model: Model,
    dataset: str | Path,
    config: SearchConfig = SearchConfig(),
    *,
    out: str | Path | None = None,
    categories: list[int] | None = None,
    images: str | Path | None = None,
    resume: bool = False,
    cache: str | Path | None = DEFAULT_CACHE,
    on_step: Callable[[SearchStep], None] = lambda step: None,
    cluster: ClusterConfig | None = None,
) -> SearchResult:
    """Search ``dataset`` (a COCO annotation file, or a folder holding one) for each category's
    alias (all categories with instances unless ``categories`` names some). ``out`` is the run
    folder (``aliases.json``, the report, checkpoints; ``resume`` continues a run there); without
    it the run lives in a temporary folder, removed once the results are returned. ``cache``
    keeps image features on disk across runs (None: in memory only). ``on_step`` receives every
    search step's ``SearchStep``; messages go to the ``mlx_alias`` logger. ``cluster`` spreads the
    categories over the machines of a Ray cluster (``ClusterConfig``; needs the ``ray`` extra)."""
    from .data.coco import load_dataset
    from .search.cache import FeatureCache
    from .search.run import run_search

    data = load_dataset(Path(dataset), None if images is None else Path(images))
    feature_cache = FeatureCache(model.sam3, model.weights, None if cache is None else Path(cache))
    if out is not None:
        return run_search(model.sam3, feature_cache, data, Path(out), config, categories, resume, on_step, cluster)
    with tempfile.TemporaryDirectory(prefix="mlx-alias-run.") as folder:
        run_dir = Path(folder) / "run"
        return run_search(model.sam3, feature_cache, data, run_dir, config, categories, False, on_step, cluster)


def load_aliases(path: str | Path) -> SearchResult:
    """A search's ``aliases.json``, read back (checked against the vocabulary)."""
    return load_alias_file(Path(path), load_tokenizer()).result
