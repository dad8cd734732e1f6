"""Categories per hour of one search spread over 1 and 2 Ray worker nodes on this machine.

    python benchmarks/scale.py [--categories 8] [--images 16] [--budget 400] [--json]

A Ray cluster of worker nodes with one CPU each (``ray.cluster_utils.Cluster``, loopback only)
runs the same search twice into fresh run folders: first with one worker node, then with two.
The dataset is the scene world's (``--categories`` concepts of ``mlx_alias.scenes``, each a
category, on ``--images`` scenes) and the model the trained tiny SAM3 shipped with the package;
1-token aliases, ``--budget`` evaluations each. Features are kept in each worker's memory only,
so every worker encodes the images it needs, as separate machines would. The seconds run from
the call to the returned result: workers starting and loading, every category, the report. The
two runs' aliases.json must be equal (the script checks). Run it on an idle machine: other
processes take the nodes' CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node addresses stay 127.0.0.1

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

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


def timed_run(root: Path, run: Path, cfg: SearchConfig, address: str) -> tuple[float, dict]:
    started = time.perf_counter()
    model = load_model(root / "weights")
    cache = FeatureCache(model, root / "weights", None)
    run_search(model, cache, load_dataset(root / "dataset"), run, cfg, cluster=ClusterConfig(address))
    return time.perf_counter() - started, json.loads((run / "aliases.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--categories", type=int, default=8, help=f"concepts of the scene world (at most {len(CONCEPTS)})"
    )
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = SearchConfig(lengths=(1,), budget=args.budget, objective=ObjectiveConfig(threshold=0.5))
    with tempfile.TemporaryDirectory(prefix="mlx-alias-scale.") as folder:
        root = Path(folder)
        convert_shipped(root / "weights")
        write_dataset(root / "dataset", list(CONCEPTS[: args.categories]), args.images, args.world_seed)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            rows = []
            for nodes in (1, 2):
                cluster.add_node(num_cpus=1, resources={RESOURCE: 1})
                cluster.wait_for_nodes()
                if not ray.is_initialized():
                    ray.init(address=cluster.address, log_to_driver=False)
                assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
                seconds, aliases = timed_run(root, root / f"run-{nodes}", cfg, cluster.address)
                rows.append(
                    {
                        "nodes": nodes,
                        "categories": args.categories,
                        "seconds": round(seconds, 1),
                        "categories_per_hour": round(args.categories / seconds * 3600, 1),
                        "aliases": aliases["aliases"],
                    }
                )
                print(f"{nodes} node(s): {args.categories} categories in {seconds:.1f} s", file=sys.stderr)
        finally:
            ray.shutdown()
            cluster.shutdown()
    same = rows[0]["aliases"] == rows[1]["aliases"]
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    summary = {
        "runs": [{k: v for k, v in r.items() if k != "aliases"} for r in rows],
        "speedup": round(speedup, 2),
        "same_aliases": same,
        "budget": args.budget,
        "images": args.images,
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print("| worker nodes (1 CPU each) | categories | seconds | categories per hour |")
    print("|---|---|---|---|")
    for r in summary["runs"]:
        print(f"| {r['nodes']} | {r['categories']} | {r['seconds']} | {r['categories_per_hour']} |")
    print(f"\nspeed-up on 2 nodes: {speedup:.2f}x; the same aliases.json: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
