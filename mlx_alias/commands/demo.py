"""``mlx-alias demo``: the whole job on the embedded default, with no download."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import SearchStatus, console


def command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder to create with everything the demo makes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model, the images and the search."),
    budget: int = typer.Option(1200, "--budget", min=1, help="Exact evaluations the search may spend."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """The whole job on an embedded default: tiny random SAM3, synthetic images, a planted prompt, a search."""

    def action() -> None:
        from mlx_alias.demo import demo

        summary = demo(out, seed=seed, budget=budget, overwrite=overwrite, on_step=SearchStatus())
        console.end_status()
        typer.echo(
            f"alias {summary['alias']!r} {summary['tokens']}: holdout score {summary['alias_holdout']:.3f} "
            f"(the hidden prompt: {summary['hidden_holdout']:.3f}) after {summary['evaluations']} evaluations"
        )
        typer.echo(f"results in {out / 'run' / 'aliases.json'}, report in {out / 'run' / 'report.md'}")

    console.guarded(action)
