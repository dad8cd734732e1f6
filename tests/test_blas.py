"""MKL under MLX's Linux CPU backend (``mlx_alias/blas.py``), in fresh interpreters: it can
only be loaded before ``mlx.core`` is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlx_alias import blas

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or blas._mkl_runtime() is None,
    reason="MKL is preloaded on Linux, where the mkl wheel is installed",
)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}  # no MLX_ALIAS_BLAS from the caller
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, env=env, check=True
    )


def test_importing_mlx_alias_first_loads_mkl_quietly() -> None:
    run = _python("import mlx_alias, mlx.core; print(mlx_alias.blas.LOADED)")
    assert "libmkl_rt" in run.stdout
    assert "reference BLAS" not in run.stderr


def test_importing_mlx_core_first_warns_that_mkl_came_too_late() -> None:
    run = _python("import mlx.core, mlx_alias; print(mlx_alias.blas.LOADED)")
    assert run.stdout.strip() == "None"
    assert "RuntimeWarning" in run.stderr and "import mlx_alias first" in run.stderr
