"""Give MLX's Linux CPU backend a fast BLAS.

The ``mlx[cpu]`` wheel links the *reference* BLAS: on a 2-core machine an fp32 matmul runs at
~5 GFLOP/s and a full-size SAM3 image takes minutes. ``libmlx.so`` calls ``cblas_sgemm`` by
name, so loading Intel's ``libmkl_rt`` (the ``mkl`` wheel, a Linux x86-64 dependency of this
package) into the global symbol scope *before* ``mlx.core`` is imported makes every MLX
matmul and convolution use MKL instead (measured: 28x on a 2048^2 matmul). The results are
the same computation, rounded as any optimised BLAS rounds.

``MLX_ALIAS_BLAS=reference`` skips this (to measure the difference); macOS (Accelerate) and
CUDA do not need it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path

LOADED: Path | None = None


def _mkl_runtime() -> Path | None:
    try:
        files = metadata.files("mkl") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libmkl_rt.so"):
            path = Path(file.locate()).resolve()
            if path.is_file():
                return path
    return None


def preload() -> Path | None:
    """Load libmkl_rt globally if it is installed and MLX is not imported yet."""
    global LOADED
    if LOADED or not sys.platform.startswith("linux") or os.environ.get("MLX_ALIAS_BLAS") == "reference":
        return LOADED
    path = _mkl_runtime()
    if path is not None and "mlx.core" in sys.modules:  # too late to interpose: MLX already bound its BLAS
        # said aloud: silent, it once made a benchmark script that imported mlx.core first 6x slower
        warnings.warn(
            "mlx.core was imported before mlx_alias, so MLX keeps its reference BLAS and runs "
            "matmuls about 20x slower on the CPU: import mlx_alias first",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    if path is not None:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        LOADED = path
    return LOADED


def set_threads(count: int) -> int | None:
    """Make the preloaded MKL run its matmuls on ``count`` threads; returns the number MKL now
    reports (None where no MKL is loaded: Accelerate and CUDA manage their own). MKL otherwise
    follows ``OMP_NUM_THREADS``, which Ray sets to 1 in an actor that reserved no CPUs."""
    if LOADED is None:
        return None
    ctypes.CDLL(str(LOADED)).MKL_Set_Num_Threads(ctypes.c_int(count))
    return threads()


def threads() -> int | None:
    """The threads the preloaded MKL runs on (None where no MKL is loaded)."""
    return None if LOADED is None else int(ctypes.CDLL(str(LOADED)).MKL_Get_Max_Threads())
