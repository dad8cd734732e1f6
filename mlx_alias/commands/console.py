"""What every command shares: one-sentence errors (tracebacks with ``--debug``), the one-line
progress display on stderr, and the options that mean the same in several commands."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import typer

# Errors that mean "bad input or environment", reported as sentences.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)
CACHE = Path.home() / ".cache" / "mlx-alias"  # the image feature cache's default folder


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Console:
    """The process's terminal: whether to show tracebacks, and whether a status line is open.
    The status line is drawn only where stderr is a terminal; elsewhere only plain lines go out."""

    def __init__(self) -> None:
        self.debug = False
        self._status_open = False

    def status(self, line: str) -> None:
        """Rewrite the one-line progress display on stderr (a terminal only)."""
        if not sys.stderr.isatty():
            return
        typer.echo(f"\r{line}   ", nl=False, err=True)
        self._status_open = True

    def end_status(self) -> None:
        if self._status_open:
            typer.echo("", err=True)
            self._status_open = False

    def say(self, line: str) -> None:
        """A line on stderr, below any open status line."""
        self.end_status()
        typer.echo(line, err=True)

    def fail(self, message: str) -> None:
        self.end_status()
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=1)

    def guarded(self, action: Callable[[], None], interrupted: Callable[[], str] = lambda: "interrupted") -> None:
        """Run ``action``; a user error becomes a one-sentence message and exit code 1, Ctrl-C the
        sentence ``interrupted()`` returns."""
        if self.debug:
            action()
            return
        try:
            action()
        except USER_ERRORS as exc:
            text = str(exc).strip() or type(exc).__name__
            self.fail(text[0].lower() + text[1:])
        except KeyboardInterrupt:
            self.fail(interrupted())


console = Console()


class _ConsoleHandler(logging.Handler):
    """The library's log lines (the ``mlx_alias`` logger), printed below the status line."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        console.say(prefix + record.getMessage())


def show_library_messages() -> None:
    """Send the ``mlx_alias`` logger's messages (info and up) to the terminal, once."""
    logger = logging.getLogger("mlx_alias")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.INFO)


class SearchStatus:
    """The status line of a search: category k of N, length, phase, evaluations of the budget,
    best score, elapsed time and the estimated time to the end of this length's budget."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._mark: tuple[str, int, float] | None = None  # (category and length, evaluations, time) at its start

    def __call__(self, p) -> None:
        now = time.monotonic()
        key = f"{p.category}/{p.length}"
        if self._mark is None or self._mark[0] != key:
            self._mark = (key, p.evaluations, now)
        _, first, since = self._mark
        rate = (p.evaluations - first) / (now - since) if now > since else 0.0
        eta = (
            f", about {_duration((p.budget - p.evaluations) / rate)} left"
            if rate > 0 and p.evaluations < p.budget
            else ""
        )
        console.status(
            f"{p.category} ({p.number}/{p.count}) length {p.length} {p.phase:9s} {p.evaluations}/{p.budget} "
            f"evaluations, best {p.best:.3f}, {_duration(now - self.started)}{eta}"
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def load_weights(weights: Path, dtype: Dtype | None = None):
    """The MLX model in a weights folder, computing in ``dtype`` when given."""
    import mlx.core as mx

    from mlx_alias.model.weights import load_model

    model = load_model(weights)
    if dtype is not None:
        model.set_dtype(getattr(mx, dtype.value))
    return model


def category_ids(text: str | None) -> list[int] | None:
    """``--categories``: comma-separated category ids (None: all categories)."""
    if text is None:
        return None
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--categories must be comma-separated category ids, got {text!r}") from None
    if not ids:
        raise ValueError(f"--categories names no category id (got {text!r})")
    return ids
