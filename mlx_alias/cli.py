"""``mlx-alias``: the command line. One module per command in ``mlx_alias/commands/``; errors a
user can cause are printed as one sentence with a non-zero exit, ``--debug`` shows the
traceback instead."""

from __future__ import annotations

import typer

from .commands import convert, demo, evaluate, init, plant, search, segment, verify
from .commands.console import console, show_library_messages

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find token aliases that make SAM3 segment a concept (MLX port of SAM3).",
)

for name, module in (
    ("init", init),
    ("convert", convert),
    ("segment", segment),
    ("verify", verify),
    ("search", search),
    ("evaluate", evaluate),
    ("plant", plant),
    ("demo", demo),
):
    app.command(name=name)(module.command)


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    console.debug = debug
    show_library_messages()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
