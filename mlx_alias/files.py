"""Writing outputs so that a failure leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class OutputError(OSError):
    """An output location that cannot be written; the message is one sentence."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_target(target: Path, *, overwrite: bool = False) -> Path:
    """Fail early, before any long work, if ``target`` cannot be created; returns its parent."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputError(f"{target} already exists (pass --overwrite to replace it)")
    parent = target.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise OutputError(f"cannot write into {parent} ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {parent} (permission denied)")
    return parent


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it is renamed to ``target``.
    On any error the temporary folder is removed and ``target`` is left as it was."""
    parent = check_target(target, overwrite=overwrite)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    except OSError as exc:
        raise OutputError(f"cannot write into {parent} ({exc.strerror or exc})") from exc
    try:
        yield staging
        if target.exists():
            old = staging.with_suffix(".old")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write(path: Path, write: Callable[[str], None], *, durable: bool = False) -> None:
    """Have ``write`` fill a temporary file in the same folder, then rename it to ``path``.

    With ``durable`` the file and the rename are flushed to disk (fsync) before returning, so a
    power cut leaves either the old file or the new one. A failure to write raises
    ``OutputError`` naming ``path`` (not the temporary file)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result should not be
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _cannot_write(path, exc) from exc
        raise


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=durable)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write {path} ({exc.strerror or exc})")
