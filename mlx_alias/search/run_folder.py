"""The run folder: claimed by one process at a time, started only when empty, resumed only on
the same settings, weights and data, and left with nothing when a start fails early.

RUN_DIR holds:

* ``run.json``: the settings, the weights' and the dataset's digests and where they were;
* ``dataset.json``: the digest of every image file, to name what changed;
* ``state/<category>-<length>.safetensors``: the checkpoints of the category in progress
  (``state.py``: JSON and arrays, never code);
* ``aliases.json``, ``report.md``, ``figures/``: the results;
* ``.lock``: held (``flock``) by the process using the folder.

Paths recorded in it are relative to the run folder when they lie inside the folder that holds
it (the demo's weights and dataset beside its run), absolute otherwise; a resume compares
digests, not paths, so moved data resume too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlx_alias.data.fingerprint import DatasetFingerprint
from mlx_alias.files import atomic_write_bytes

RUN_FORMAT = "mlx-alias.run/2"
RUN = "run.json"
DATASET = "dataset.json"
ALIASES = "aliases.json"
STATE = "state"
LOCK = ".lock"


class RunError(ValueError):
    """A run folder that cannot be started or resumed; the message is one sentence."""


def recorded_path(path: Path, run_dir: Path) -> str:
    """How the run records ``path``: relative to the run folder if it lies in the run folder's
    parent (so that the two can move together), absolute otherwise."""
    path, run_dir = Path(path).absolute(), Path(run_dir).absolute()
    if path.is_relative_to(run_dir.parent):
        return os.path.relpath(path, run_dir)
    return str(path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode(), durable=True)


def read_json(path: Path, what: str) -> Any:
    """A JSON file of the run; one sentence naming it if it cannot be read."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise RunError(f"cannot read {path} ({exc.strerror or exc}); {what}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise RunError(f"{path} is damaged (not JSON{where}); {what}") from exc


def differences(before: Any, now: Any, name: str = "") -> list[str]:
    """Each setting that differs, as ``name was X, now Y`` (nested settings by dotted name)."""
    if isinstance(before, dict) and isinstance(now, dict):
        found = []
        for key in list(before) + [k for k in now if k not in before]:
            found += differences(before.get(key), now.get(key), f"{name}.{key}" if name else key)
        return found
    return [] if before == now else [f"{name} was {json.dumps(before)}, now {json.dumps(now)}"]


def _lock(path: Path) -> int:
    """An exclusive ``flock`` on ``path`` (created), or RunError naming the holder's pid.
    Retries when the file was replaced between our open and our lock (a failed start removes it)."""
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunError(
                f"{path.parent} is in use by another mlx-alias process (pid {holder}); wait for it to end or stop it"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise RunError(f"cannot lock {path}: it keeps being replaced")


class RunFolder:
    """A run folder claimed by this process (``claim``); ``start`` or ``resume`` it inside."""

    def __init__(self, path: Path, created: bool):
        self.path = Path(path)
        self.created = created  # this process made the folder
        self.fresh = False  # started (not resumed) by this process

    @property
    def started(self) -> bool:
        """Whether the run has anything to resume from: a checkpoint or a finished category."""
        state = self.path / STATE
        return (self.path / ALIASES).is_file() or (state.is_dir() and any(state.iterdir()))

    def recorded(self) -> dict | None:
        """``run.json`` as the run started (None if there is none)."""
        meta = self.path / RUN
        return read_json(meta, "the run cannot be resumed; start a new one") if meta.is_file() else None

    def start(self, settings: dict, dataset: DatasetFingerprint) -> None:
        leftovers = [p.name for p in self.path.iterdir() if p.name != LOCK]
        if leftovers:
            raise RunError(f"{self.path} already holds files (pass --resume to continue that run)")
        self.fresh = True
        (self.path / STATE).mkdir()
        write_json(self.path / DATASET, {"annotations_sha256": dataset.annotations, "images": dataset.images})
        write_json(self.path / RUN, {"format": RUN_FORMAT, **settings})

    def resume(self, settings: dict, dataset: DatasetFingerprint) -> dict | None:
        """Check that the run in the folder is this one; returns its ``aliases.json`` (None
        before its first category has finished)."""
        before = self.recorded()
        if before is None:
            raise RunError(f"{self.path} holds no run to resume ({RUN} is missing)")
        if before.get("format") != RUN_FORMAT:
            raise RunError(
                f"{self.path} holds a run written by another version of mlx-alias "
                f"(format {before.get('format')!r}, this one reads {RUN_FORMAT!r}); start a new run"
            )
        found = differences(_compared(before), _compared({"format": RUN_FORMAT, **settings}))
        if any(f.startswith("weights.") for f in found):
            found = [f for f in found if not f.startswith("weights.")]
            found.append(
                f"the weights differ (sha256 {before.get('weights', {}).get('sha256', '?')[:12]}... then, "
                f"{settings['weights']['sha256'][:12]}... now)"
            )
        if any(f.startswith("dataset.") for f in found):
            found = [f for f in found if not f.startswith("dataset.")]
            recorded = read_json(self.path / DATASET, "the run cannot be resumed; start a new one")
            changed = dataset.differences(
                DatasetFingerprint(recorded.get("annotations_sha256", ""), recorded.get("images", {}))
            )
            found.append(f"the dataset differs: {', '.join(changed) or 'its digests do'}")
        if found:
            raise RunError(
                f"{self.path} was started with other settings, weights or data, so it cannot be "
                f"resumed with these: {'; '.join(found)}"
            )
        aliases = self.path / ALIASES
        return read_json(aliases, "remove it to redo the run's finished categories") if aliases.is_file() else None

    def remove_failed_start(self) -> None:
        """After a fresh start that failed before its first checkpoint: leave nothing behind."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for item in self.path.iterdir():
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)


def _compared(settings: dict) -> dict:
    """The settings a resume must match: all but where the weights and data were found."""
    weights = {k: v for k, v in settings.get("weights", {}).items() if k != "path"}
    dataset = {k: v for k, v in settings.get("dataset", {}).items() if k != "path"}
    return {**settings, "weights": weights, "dataset": dataset}


@contextlib.contextmanager
def claim(path: Path, *, resume: bool) -> Iterator[RunFolder]:
    """Hold the run folder's lock for the ``with`` block. A fresh start (``RunFolder.start``)
    that fails or is interrupted before its first checkpoint removes what it created."""
    path = Path(path)
    if resume and not path.is_dir():
        raise RunError(f"{path} holds no run to resume (it does not exist)")
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} is a file, not a run folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()  # atomic: of two processes starting at once, one creates the folder
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise RunError(f"cannot create the run folder {path} ({exc.strerror or exc})") from exc
    try:
        fd = _lock(path / LOCK)
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise RunError(f"cannot lock the run folder {path} ({exc.strerror or exc})") from exc
    folder = RunFolder(path, created)
    try:
        yield folder
    except BaseException:
        if folder.fresh and not folder.started:
            folder.remove_failed_start()
        raise
    finally:
        os.close(fd)  # releases the lock
