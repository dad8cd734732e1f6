"""A cluster worker: a long-lived Ray actor, one per machine, that loads the weights, the
dataset and its feature cache once and searches the categories the driver hands it.

It never touches the run folder. Each category starts from the checkpoints the driver sends
(none for a fresh one), runs in a private temporary folder, and streams its checkpoints back
(at most one every ``every`` seconds, and each length's last), then the alias, all as plain
bytes and JSON: MLX arrays and features stay on the machine.

The class is plain Python, made an actor by the driver (``cluster.py``), so importing this
module needs no Ray; Ray imports it in the actor's process, after ``mlx_alias`` (whose import
preloads MKL before ``mlx.core``: the package's ``__init__`` runs first).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mlx_alias import blas
from mlx_alias.data.coco import load_dataset
from mlx_alias.data.fingerprint import fingerprint_dataset
from mlx_alias.files import atomic_write_bytes
from mlx_alias.tokenizer import load_tokenizer

from .cache import FeatureCache
from .category import category_steps, state_name
from .driver import SearchConfig


@dataclass(frozen=True)
class WorkerJob:
    """What every worker loads, and the digests the run holds it to. Paths under the driver's
    home are sent as ``~/...`` and expanded in each machine's own home."""

    weights: str
    dtype: str | None  # compute dtype; None: the weights' own
    annotations: str
    images: str
    cache: str | None  # feature cache folder; None: in memory
    weights_sha256: str
    dataset: dict  # DatasetFingerprint.summary() of the run's dataset
    threads: int


def portable(path: Path | None) -> str | None:
    """``path`` as a worker should find it: under the home folder as ``~/...``."""
    if path is None:
        return None
    path, home = Path(path).absolute(), Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def _local(path: str | None) -> Path | None:
    return None if path is None else Path(path).expanduser()


class SearchWorker:
    def __init__(self, job: WorkerJob):
        # Ray sets OMP_NUM_THREADS from the CPUs the actor reserved; MKL is set explicitly too
        os.environ["OMP_NUM_THREADS"] = str(job.threads)
        self.threads = blas.set_threads(job.threads)
        self.job = job
        self.refusal: str | None = None
        try:
            self.dataset = load_dataset(_local(job.annotations), _local(job.images))
            from mlx_alias.api import load  # here: the API imports the cluster, which imports this

            model = load(_local(job.weights), job.dtype).sam3
            self.cache = FeatureCache(model, _local(job.weights), _local(job.cache))
            self.model, self.tokenizer = model, load_tokenizer()
            if self.cache.fingerprint != job.weights_sha256:
                self.refusal = (
                    f"its weights at {_local(job.weights)} are not the run's (sha256 "
                    f"{self.cache.fingerprint[:12]}..., the run's {job.weights_sha256[:12]}...)"
                )
            elif (found := fingerprint_dataset(self.dataset).summary()) != job.dataset:
                self.refusal = (
                    f"its dataset at {_local(job.annotations)} is not the run's ({found} against {job.dataset})"
                )
            elif self.threads is not None and self.threads != job.threads:
                self.refusal = f"its BLAS runs {self.threads} threads, not the {job.threads} it reserved"
        except ValueError as exc:  # weights, dataset, images, cache: each a one-sentence error
            self.refusal = str(exc).rstrip(".")

    def describe(self) -> dict:
        """Where it runs and whether it can work (``refused``: why not, one clause)."""
        return {"host": platform.node(), "pid": os.getpid(), "threads": self.threads, "refused": self.refusal}

    def search(
        self, cfg: SearchConfig, category_id: int, number: int, count: int, states: dict[int, bytes], every: float
    ) -> Iterator[dict]:
        """Search one category from ``states`` (length -> checkpoint bytes); yields
        ``{"checkpoint": bytes, "length": n, "step": SearchStep fields or None}`` as it goes,
        then ``{"alias": Alias JSON}``."""
        with tempfile.TemporaryDirectory(prefix="mlx-alias-worker.") as folder:
            state_dir = Path(folder)
            for length, data in states.items():
                atomic_write_bytes(state_dir / state_name(category_id, length), data)
            steps = category_steps(
                self.model, self.cache, self.dataset, self.tokenizer, cfg, category_id, state_dir, number, count
            )
            shipped = -float("inf")
            while True:
                try:
                    done = next(steps)
                except StopIteration as stop:
                    yield {"alias": stop.value.to_json()}
                    return
                if done.finished or time.monotonic() - shipped >= every:
                    shipped = time.monotonic()
                    step = None if done.step is None else asdict(done.step)
                    yield {"checkpoint": done.path.read_bytes(), "length": done.length, "step": step}
