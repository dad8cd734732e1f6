"""The Python API: load, segment (text, ids, an alias), find aliases with and without a run
folder, read the results back; the same results the command line writes."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

import mlx_alias
from mlx_alias.data.coco import load_dataset
from mlx_alias.tokenizer import load_tokenizer

from clitools import HIDDEN


def test_the_python_api_end_to_end(search_weights, planted, tmp_path):
    dataset, threshold = planted
    model = mlx_alias.load(search_weights / "mlx")
    data = load_dataset(dataset)
    image = data.images[data.positives(1)[0]].path
    found = model.segment(image, HIDDEN, threshold=threshold)
    assert found.tokens == tuple(load_tokenizer().encode(HIDDEN)) and found.instances
    assert all(i.mask.shape == (found.height, found.width) for i in found.instances)
    assert [i.score for i in found.instances] == sorted((i.score for i in found.instances), reverse=True)
    assert all(i.score > threshold and i.mask.dtype == bool for i in found.instances)

    config = mlx_alias.SearchConfig(
        lengths=(2,), budget=40, holdout_fraction=0.34, objective=mlx_alias.ObjectiveConfig(threshold=threshold)
    )
    run = mlx_alias.find_aliases(model, dataset, config, out=tmp_path / "run", cache=tmp_path / "cache")
    alias = run.aliases[0]
    assert isinstance(alias, mlx_alias.Alias) and len(alias.tokens) == 2 and alias.train_score is not None
    written = json.loads((tmp_path / "run" / "aliases.json").read_text())
    assert written == run.to_json()  # the file is written from these objects
    assert mlx_alias.load_aliases(tmp_path / "run" / "aliases.json") == run

    applied = model.segment(image, alias, threshold=run.objective.threshold)
    assert applied.tokens == alias.tokens
    by_ids = model.segment(
        np.asarray(Image.open(image).convert("RGB")), list(alias.tokens), threshold=run.objective.threshold
    )
    assert [i.score for i in by_ids.instances] == [i.score for i in applied.instances]

    # without a run folder: the same search in a temporary one, and nothing left behind
    again = mlx_alias.find_aliases(model, dataset, config, cache=None)
    assert again.aliases[0].tokens == alias.tokens and again.aliases[0].train_score == alias.train_score
