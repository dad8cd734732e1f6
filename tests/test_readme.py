"""The README's Python example runs as written, on the files the demo makes (the shipped model
converted, a dataset of scenes)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README holds one Python example"
    return blocks[0]


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    from mlx_alias.demo import LABEL
    from mlx_alias.scenes.concepts import CONCEPTS
    from mlx_alias.scenes.dataset import write_dataset
    from mlx_alias.scenes.weights import convert_shipped

    demo = tmp_path / "runs" / "demo"
    convert_shipped(demo / "weights")
    write_dataset(demo / "dataset", [next(c for c in CONCEPTS if c.label == LABEL)], 8, seed=0)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_example(), str(README), "exec"), namespace)  # noqa: S102  (the README's own code)
    alias, found = namespace["alias"], namespace["found"]
    assert alias.tokens and found.tokens == alias.tokens
