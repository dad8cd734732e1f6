"""mlx-alias: find token aliases that make SAM3 segment a concept.

The Python API (``mlx_alias.api``): ``load``, ``find_aliases``, ``load_aliases``, ``Model``,
``SearchConfig``, ``ClusterConfig``, ``ObjectiveConfig``, ``SearchResult``, ``Alias``,
``Segmentation``. They are imported on first use, so that ``import mlx_alias`` stays light (the command line imports only
what each command needs)."""

from . import blas

blas.preload()  # before anything imports mlx.core (see blas.py)

_API = {
    "load": "api",
    "find_aliases": "api",
    "load_aliases": "api",
    "Model": "api",
    "Segmentation": "api",
    "SearchConfig": "search.driver",
    "ClusterConfig": "search.cluster",
    "ObjectiveConfig": "search.objective",
    "SearchResult": "search.alias_file",
    "Alias": "search.alias_file",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mlx_alias' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
