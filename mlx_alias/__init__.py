"""mlx-alias: find token aliases that make SAM3 segment a concept."""

from . import blas

blas.preload()  # before anything imports mlx.core (see blas.py)
