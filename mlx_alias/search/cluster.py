"""One search over many machines, on Ray: the driver's side.

The driver starts one long-lived worker (``worker.SearchWorker``) per unit of the ``mlx_alias``
resource that a node offers (one per machine, as ``ray start --resources '{"mlx_alias": 1}'``
declares it; ``--ray local --workers N`` offers N on this machine), each reserving its share of
its node's CPUs, which it runs its BLAS on. A worker whose weights or dataset are not the
run's is refused. The driver hands out categories from a queue, one at a time per worker,
takes each worker's checkpoints as they come (``ray.wait`` over the workers' streams) and
alone writes them to the run folder. When a worker dies, its category goes back to the front
of the queue and the next free worker resumes it from the last checkpoint received; nothing
from the dead worker's stream is read again, so its late writes never reach the folder.

Everything crossing Ray is small and plain: settings, checkpoint bytes, alias JSON.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlx_alias.files import atomic_write_bytes

from .alias_file import Alias
from .category import state_name
from .driver import SearchConfig, SearchStep
from .run_folder import RunError
from .state import StateError, load_state
from .worker import SearchWorker, WorkerJob

log = logging.getLogger(__name__)
RESOURCE = "mlx_alias"  # the custom resource that marks a node's capacity for workers
START_SECONDS = 900  # for a worker to load the weights and hash the dataset
# checkpoints a worker may send before the driver has read them: it then waits, so a worker
# never runs far ahead of the run folder (what its death loses) nor piles up checkpoint bytes
AHEAD = 2


@dataclass(frozen=True)
class ClusterConfig:
    """Where the workers run: ``address`` "local" starts Ray on this machine with ``workers``
    workers sharing its CPUs; any other address ("auto", "HOST:PORT", "ray://HOST:PORT") joins
    that cluster, one worker per unit of ``mlx_alias`` its nodes offer."""

    address: str = "local"
    workers: int = 2  # "local" only
    # at most one checkpoint shipped per worker this often (and each length's last): what a
    # dying machine can lose
    checkpoint_seconds: float = 5.0


@dataclass
class _Worker:
    actor: object
    name: str  # host, pid (for messages)


def _connect(cluster: ClusterConfig) -> bool:
    """Join or start Ray; True when this call started it (and so shuts it down after)."""
    try:
        import ray
    except ImportError:
        raise RunError("a search on Ray needs Ray: pip install 'mlx-alias[ray]'") from None

    if ray.is_initialized():
        return False
    if cluster.address == "local":
        if cluster.workers < 1:
            raise RunError(f"--workers must be at least 1, got {cluster.workers}")
        # address "local": a new Ray here, even where another one is running
        ray.init(
            address="local", num_cpus=os.cpu_count(), resources={RESOURCE: cluster.workers}, include_dashboard=False
        )
    else:
        try:
            ray.init(address=cluster.address)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise RunError(f"cannot join the Ray cluster at {cluster.address} ({exc})") from exc
    return True


def _start_workers(job: WorkerJob) -> list[_Worker]:
    """One worker per unit of the resource on each alive node, pinned to it, each reserving an
    equal share of the node's CPUs; those that cannot work are refused (logged), the rest returned."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(SearchWorker)
    actors = []
    for node in ray.nodes():
        units = int(node["Resources"].get(RESOURCE, 0)) if node["Alive"] else 0
        reserved = int(node["Resources"].get("CPU", 0)) // max(units, 1)
        threads = max(1, reserved)
        for _ in range(units):
            options = remote.options(
                num_cpus=reserved,
                resources={RESOURCE: 1},
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            )
            actors.append((options.remote(dataclasses.replace(job, threads=threads)), threads))
    if not actors:
        raise RunError(
            f"no node of the Ray cluster offers the {RESOURCE!r} resource: start each machine's Ray with "
            f"--resources '{{\"{RESOURCE}\": 1}}'"
        )
    workers, refusals = [], []
    for actor, threads in actors:
        try:
            info = ray.get(actor.describe.remote(), timeout=START_SECONDS)
        except ray.exceptions.RayError as exc:
            refusals.append(f"a worker could not start ({type(exc).__name__})")
            continue
        name = f"{info['host']} (pid {info['pid']})"
        if info["refused"]:
            refusals.append(f"the worker on {name} is refused: {info['refused']}")
            log.warning("the worker on %s is refused: %s", name, info["refused"])
            ray.kill(actor)
            continue
        workers.append(_Worker(actor, name))
        blas = f"MKL on {info['threads']} thread(s)" if info["threads"] is not None else "the platform's BLAS"
        log.info("worker on %s: %d CPU%s reserved, %s", name, threads, "" if threads == 1 else "s", blas)
    if not workers:
        raise RunError(f"no worker can search: {'; '.join(refusals)}")
    return workers


def _states(state_dir: Path, category_id: int, cfg: SearchConfig) -> tuple[dict[int, bytes], str]:
    """The checkpoints the run folder holds for a category, by length, and where they stand (for
    the log). Each is read here first, so that a damaged one is named by its path in the run
    folder, as on one machine, not by a worker's copy."""
    states, evaluations = {}, []
    for length in cfg.lengths:
        path = state_dir / state_name(category_id, length)
        if not path.is_file():
            continue
        try:
            evaluations.append(f"length {length} at {load_state(path)['evaluations']} evaluations")
        except (StateError, KeyError) as exc:
            reason = str(exc) if isinstance(exc, StateError) else f"the checkpoint {path} holds no search state"
            raise StateError(
                f"{reason}; delete it to restart the {length}-token search of category {category_id} from its beginning"
            ) from exc
        states[length] = path.read_bytes()
    return states, ", ".join(evaluations)


def _task_error(exc: Exception) -> Exception:
    """A search's own error raised in a worker, as the exception it was (one sentence), so that
    the run fails as it would on one machine."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def search_on_cluster(
    cluster: ClusterConfig,
    job: WorkerJob,
    cfg: SearchConfig,
    todo: list[tuple[int, int]],
    count: int,
    state_dir: Path,
    on_step: Callable[[SearchStep], None] = lambda step: None,
) -> Iterator[Alias]:
    """Search the categories ``todo`` ((place in the run, category id)) of a run of ``count``
    on the cluster's workers, writing their checkpoints into ``state_dir``; yields each alias
    as its category finishes (in the order they finish)."""
    import ray

    started = _connect(cluster)
    workers: list[_Worker] = []
    try:
        workers = _start_workers(job)
        queue, idle = deque(todo), list(workers)
        running: dict[object, tuple[_Worker, int, int]] = {}  # stream -> (worker, number, category)
        while queue or running:
            while queue and idle:
                worker, (number, category_id) = idle.pop(0), queue.popleft()
                states, where = _states(state_dir, category_id, cfg)
                log.info("category %d to %s%s", category_id, worker.name, f", resuming ({where})" if states else "")
                stream = worker.actor.search.options(_generator_backpressure_num_objects=AHEAD).remote(
                    cfg, category_id, number, count, states, cluster.checkpoint_seconds
                )
                running[stream] = (worker, number, category_id)
            if not running:
                raise RunError(f"every worker died with {len(queue)} categories left; resume the run with --resume")
            (stream,), _ = ray.wait(list(running), num_returns=1)
            worker, number, category_id = running[stream]
            try:
                item = ray.get(next(stream))
            except ray.exceptions.RayTaskError as exc:
                raise _task_error(exc) from None
            except (ray.exceptions.RayError, StopIteration) as exc:
                del running[stream]  # never read again: a dead worker's late items go nowhere
                queue.appendleft((number, category_id))
                log.warning(
                    "the worker on %s was lost (%s) while searching category %d; it goes to the next free worker",
                    worker.name,
                    type(exc).__name__,
                    category_id,
                )
                continue
            if "checkpoint" in item:
                atomic_write_bytes(
                    state_dir / state_name(category_id, item["length"]), item["checkpoint"], durable=True
                )
                if item["step"] is not None:
                    on_step(SearchStep(**item["step"]))
                continue
            del running[stream]
            idle.append(worker)
            yield Alias.from_json(item["alias"])
    finally:
        for worker in workers:
            ray.kill(worker.actor)
        if started:
            ray.shutdown()
