"""One search spread over a Ray cluster of two worker nodes on this machine (one CPU each):
the same ``aliases.json`` as the search in one process, a node killed mid-category whose
category another worker resumes from its checkpoint, and a node with other weights refused.

Everything stays on loopback: ``conftest.py`` sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
before Ray is imported, and the cluster fixture checks every node's address."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from mlx_alias import blas  # noqa: E402
from mlx_alias.data.coco import load_dataset  # noqa: E402
from mlx_alias.model.weights import load_model  # noqa: E402
from mlx_alias.scenes.concepts import CONCEPTS  # noqa: E402
from mlx_alias.scenes.dataset import write_dataset  # noqa: E402
from mlx_alias.scenes.weights import convert_shipped  # noqa: E402
from mlx_alias.search.cache import FeatureCache  # noqa: E402
from mlx_alias.search.cluster import RESOURCE, ClusterConfig  # noqa: E402
from mlx_alias.search.driver import SearchConfig  # noqa: E402
from mlx_alias.search.objective import ObjectiveConfig  # noqa: E402
from mlx_alias.search.run import run_search  # noqa: E402
from mlx_alias.search.state import StateError  # noqa: E402

from clitools import clean_failure, run_cli  # noqa: E402

LABELS = ("purple", "red", "circle")  # three categories of the scene world
CONFIG = SearchConfig(lengths=(1,), budget=120, objective=ObjectiveConfig(threshold=0.5))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The folder every node (and the driver) takes as its home: the shipped trained model
    converted (``weights/``) and 8 scenes with three labelled categories (``dataset/``)."""
    root = tmp_path_factory.mktemp("home")
    convert_shipped(root / "weights")
    write_dataset(root / "dataset", [c for c in CONCEPTS if c.label in LABELS], 8, seed=0)
    return root


@pytest.fixture(scope="module")
def cluster(home):
    """A head without CPUs (it runs no worker) and two worker nodes of one CPU each."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={RESOURCE: 1}, env_vars={"HOME": str(home)})
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    assert cluster.address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}  # loopback only
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def add_node(cluster, home):
    node = cluster.add_node(num_cpus=1, resources={RESOURCE: 1}, env_vars={"HOME": str(home)})
    cluster.wait_for_nodes()
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}  # loopback only
    return node


@pytest.fixture(scope="module")
def single_run(home, tmp_path_factory):
    """The run in this process on one BLAS thread, as each worker runs (a matmul's rounding
    depends on how many threads split it): what the cluster must reproduce."""
    run = tmp_path_factory.mktemp("single") / "run"
    threads = blas.threads()
    blas.set_threads(1)
    try:
        _search(home, run, None)
    finally:
        if threads is not None:
            blas.set_threads(threads)
    return run


@pytest.fixture(scope="module")
def single(single_run):
    return json.loads((single_run / "aliases.json").read_text())


def _search(home, run, cluster, on_step=lambda step: None, resume=False):
    model = load_model(home / "weights")
    cache = FeatureCache(model, home / "weights", home / "cache")
    data = load_dataset(home / "dataset")
    run_search(model, cache, data, run, CONFIG, resume=resume, on_step=on_step, cluster=cluster)
    return json.loads((run / "aliases.json").read_text())


def differing(a, b, path="") -> list[str]:
    """Where two JSON documents differ, as ``path: a != b``."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in differing(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differing(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.fixture
def in_home(home, monkeypatch):
    """The driver's home is the nodes' (so that paths under it travel as ``~/...``)."""
    monkeypatch.setenv("HOME", str(home))
    return home


def test_the_command_line_starts_a_local_ray_and_gives_the_single_process_result(home, single, tmp_path):
    """``mlx-alias search --ray local --workers 2`` on this 2-core machine: two workers of one CPU
    each. In its own process, as a user runs it (a local Ray leaves its token authentication
    turned on in the environment of the process that started it)."""
    args = ["search", "--weights", home / "weights", "--dataset", home / "dataset", "--out", tmp_path / "run"]
    args += ["--length", 1, "--budget", CONFIG.budget, "--threshold", 0.5, "--cache", home / "cache"]
    command = [sys.executable, "-c", "from mlx_alias.cli import main; main()", *map(str, args)]
    done = subprocess.run([*command, "--ray", "local", "--workers", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not differing(json.loads((tmp_path / "run" / "aliases.json").read_text()), single)
    clean_failure(run_cli(*args[:6], tmp_path / "other", "--workers", 2), "--workers applies to --ray local only")


def test_a_cluster_search_gives_the_single_process_result(cluster, in_home, single, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mlx_alias")
    found = _search(in_home, tmp_path / "run", ClusterConfig(cluster.address))
    assert [a["category_id"] for a in found["aliases"]] == [1, 2, 3]
    assert not differing(found, single)
    workers = [r.getMessage() for r in caplog.records if r.getMessage().startswith("worker on ")]
    threads = "MKL on 1 thread(s)" if blas.LOADED else "the platform's BLAS"  # MKL: Linux x86-64
    assert len(workers) == 2 and all(m.endswith(f": 1 CPU reserved, {threads}") for m in workers), workers
    assert not list((tmp_path / "run" / "state").iterdir())  # every category's checkpoints cleared


def test_a_node_with_other_weights_is_refused(cluster, in_home, single, tmp_path, caplog):
    other = tmp_path / "other-home"
    shutil.copytree(in_home / "dataset", other / "dataset")
    convert_shipped(other / "weights", dtype="float16")  # the same model, other bytes
    node = add_node(cluster, other)
    try:
        caplog.set_level(logging.INFO, logger="mlx_alias")
        found = _search(in_home, tmp_path / "run", ClusterConfig(cluster.address))
    finally:
        cluster.remove_node(node)
    refused = [r.getMessage() for r in caplog.records if "is refused" in r.getMessage()]
    assert len(refused) == 1
    assert re.fullmatch(
        rf"the worker on \S+ \(pid \d+\) is refused: its weights at {re.escape(str(other / 'weights'))} are not "
        r"the run's \(sha256 [0-9a-f]{12}\.\.\., the run's [0-9a-f]{12}\.\.\.\)",
        refused[0],
    )
    assert not differing(found, single)  # the two other workers did the run


def test_a_run_started_in_one_process_resumes_on_the_cluster(cluster, in_home, single_run, single, tmp_path):
    """The one-process run, as if stopped after its first category, resumed with ``--resume`` on
    the cluster: the same aliases.json as the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(single_run, run)
    aliases = json.loads((run / "aliases.json").read_text())
    aliases["aliases"] = aliases["aliases"][:1]
    (run / "aliases.json").write_text(json.dumps(aliases))
    assert not differing(_search(in_home, run, ClusterConfig(cluster.address), resume=True), single)


def test_a_damaged_checkpoint_is_named_by_its_path_in_the_run_folder(cluster, in_home, single_run, tmp_path):
    """A resume on the cluster whose category 3 left a damaged checkpoint: refused in one
    sentence naming the run folder's file (not a worker's copy of it)."""
    run = tmp_path / "run"
    shutil.copytree(single_run, run)
    aliases = json.loads((run / "aliases.json").read_text())
    aliases["aliases"] = aliases["aliases"][:2]
    (run / "aliases.json").write_text(json.dumps(aliases))
    (run / "state" / "3-1.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(StateError) as refused:
        _search(in_home, run, ClusterConfig(cluster.address), resume=True)
    assert str(refused.value) == (
        f"the checkpoint {run / 'state' / '3-1.safetensors'} cannot be read: it is not a whole safetensors file "
        "(truncated, or another kind of file); delete it to restart the 1-token search of category 3 from its "
        "beginning"
    )


def test_a_node_killed_mid_category_is_resumed_elsewhere_from_its_checkpoint(
    cluster, in_home, single, tmp_path, caplog
):
    """A third node joins. At the first step whose checkpoint the driver has written, the node
    running that category dies (its raylet and workers); the category goes to a surviving
    worker, which resumes it from that checkpoint."""
    psutil = pytest.importorskip("psutil")
    add_node(cluster, in_home)
    killed = []

    def node_running(category_id: int):
        """The node whose worker searches the category, and that node's processes below its raylet."""
        assigned = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"category {category_id} to ")]
        pid = int(re.search(r"\(pid (\d+)\)", assigned[-1]).group(1))
        for node in cluster.worker_nodes:
            children = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
            if pid in {p.pid for p in children}:
                return node, children
        raise AssertionError(f"no node runs pid {pid}")

    def kill_at_the_first_checkpoint(step):
        if not killed and step.evaluations > 0:
            killed.append(step.number)  # the category's place in the run, here its id
            node, children = node_running(step.number)
            # as a machine dies: every process at once (a worker left without its raylet would
            # otherwise go on streaming for a moment, and could finish its category)
            for process in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            cluster.remove_node(node, allow_graceful=False)

    caplog.set_level(logging.INFO, logger="mlx_alias")
    config = ClusterConfig(cluster.address, checkpoint_seconds=0.0)
    found = _search(in_home, tmp_path / "run", config, kill_at_the_first_checkpoint)
    add_node(cluster, in_home) if len(cluster.worker_nodes) < 2 else None  # the fixture keeps two nodes
    messages = [r.getMessage() for r in caplog.records]
    lost = [m for m in messages if re.match(r"the worker on .* was lost \(\w+\) while searching category \d", m)]
    assert len(lost) == 1 and lost[0].endswith(f"category {killed[0]}; it goes to the next free worker")
    resumed = [m for m in messages if m.startswith(f"category {killed[0]} to ") and "resuming (" in m]
    assert len(resumed) == 1
    evaluations = int(re.search(r"length 1 at (\d+) evaluations", resumed[0]).group(1))
    assert 0 < evaluations < CONFIG.budget  # from a checkpoint mid-search, not from the start
    assert not differing(found, single)  # nothing lost, nothing changed
