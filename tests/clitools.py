"""Running ``mlx-alias`` in-process, and what a clean failure looks like."""

from __future__ import annotations

from typer.testing import CliRunner

from mlx_alias.cli import app

runner = CliRunner()
HIDDEN = "velvet lantern"  # the hidden prompt of the ``planted`` dataset (conftest.py)


def run_cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def clean_failure(result, phrase: str) -> None:
    """A non-zero exit with exactly one ``error:`` line, containing ``phrase``, and no traceback."""
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and phrase in errors[0], result.output


def search_args(search_weights, dataset, out, threshold, tmp_path, *extra) -> list:
    """``mlx-alias search`` on the tiny search model: 2-token aliases, budget 120."""
    return [
        "search",
        "--weights",
        search_weights / "mlx",
        "--dataset",
        dataset,
        "--out",
        out,
        "--length",
        2,
        "--budget",
        120,
        "--holdout",
        0.34,
        "--threshold",
        threshold,
        "--cache",
        tmp_path / "cache",
        *extra,
    ]
