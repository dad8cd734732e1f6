"""Build the fused CPU attention (mlx_alias/cpu_attention) on Linux, where MLX's own CPU attention
is scalar; macOS's CPU backend is vectorised (Accelerate) and needs none. The project's metadata
is in pyproject.toml. MLX_ALIAS_CPU_KERNEL=0 skips it, for a machine that only runs MLX on a GPU
and cannot fetch the build's tools (then ``attend`` on the CPU refuses to run, saying why)."""

import os
import sys

from setuptools import setup

if sys.platform.startswith("linux") and os.environ.get("MLX_ALIAS_CPU_KERNEL") != "0":
    from mlx import extension

    setup(
        ext_modules=[extension.CMakeExtension("mlx_alias._cpu_attention", sourcedir="mlx_alias/cpu_attention")],
        cmdclass={"build_ext": extension.CMakeBuild},
    )
else:
    setup()
