"""The ``mlx-alias`` commands, one module each (``mlx_alias/cli.py`` registers them). A
command module parses its options, calls the library and prints; it holds no logic the
Python API would need."""
