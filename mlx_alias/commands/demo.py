"""``mlx-alias demo``: the whole job on the embedded default, with no download."""

from __future__ import annotations

from pathlib import Path

import typer

from mlx_alias.demo import BUDGET

from .console import SearchStatus, console


def command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder to create with everything the demo makes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes and the search."),
    budget: int = typer.Option(
        BUDGET,
        "--budget",
        min=1,
        help="Exact evaluations the search may spend per alias length; its sweep of the vocabulary takes "
        "about 50,600 of them.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """The whole job on the embedded default: the shipped scene-world SAM3, a dataset labelled with a word it never learned, a search for the alias."""

    def action() -> None:
        from mlx_alias.demo import demo

        summary = demo(out, seed=seed, budget=budget, overwrite=overwrite, on_step=SearchStatus())
        console.end_status()
        typer.echo(f"{'':<28}{'holdout':>9}{'unseen':>9}")
        for name, text in (("label", repr(summary["label"])), ("alias", f"{summary['alias']!r} {summary['tokens']}")):
            typer.echo(f"{name + ' ' + text:<28}{summary[name + '_holdout']:>9.3f}{summary[name + '_unseen']:>9.3f}")
        typer.echo(f"({summary['evaluations']} evaluations; unseen: {summary['unseen_images']} scenes no search saw)")
        typer.echo(f"results in {out / 'run' / 'aliases.json'}, report in {out / 'run' / 'report.md'}")

    console.guarded(action)
