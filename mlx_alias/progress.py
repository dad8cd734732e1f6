"""A small progress line on stderr for long loops (silent when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def tracked(items: Iterable[T], total: int, label: str, *, every: float = 0.2) -> Iterator[T]:
    stream = sys.stderr
    live = stream.isatty()
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if live and (now - last >= every or done == total):
            last = now
            stream.write(f"\r{label}: {done}/{total} ({100 * done // max(total, 1)}%) {now - start:.1f}s")
            stream.flush()
    if live:
        stream.write("\n")
    else:
        stream.write(f"{label}: {done}/{total} in {time.monotonic() - start:.1f}s\n")
