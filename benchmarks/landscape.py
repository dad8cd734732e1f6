"""What the search sees around a planted prompt: is there anything for it to climb?

    python benchmarks/landscape.py --seeds 0 1 --prompt "velvet lantern"

For every seed it builds the planted world of ``search_quality.py`` (tiny random SAM3, the
demo's synthetic images, the prompt planted with the demo's threshold) and measures on the
training split:

- exact scores: the planted prompt, random aliases of its length, its one-token
  neighbours (one position replaced by a random allowed token: does a partly right alias earn
  partial credit?) and its embedding neighbours (one position replaced by one of the token's
  nearest allowed tokens in the embedding table: do nearby tokens act alike?);
- surrogate fidelity: the rank correlation of the surrogate with the exact score over those
  aliases and the projections met by ``--ascents`` soft ascents from random starts (40 steps,
  calibrated temperatures, each projection scored every 5 steps), at several surrogate
  temperatures (score, mask: a random tiny model's mask logits sit within about 0.2 of 0, where
  sigmoid(logit) is a grey 0.5 that hides the mask), the first scaled to the model's outputs
  as the search scales them; and how many of them mislead, with a surrogate above the planted
  prompt's and an exact score below 0.85 of its (where an ascent goes wrong);
- gradient signal: for aliases with all positions but one taken from the planted prompt, the
  rank of the planted token at the free position under the surrogate's one-hot gradient
  (what GCG's top-k draws from); chance is half the allowed vocabulary.

Prints a table per seed; ``--json`` one object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
from search_quality import world

from mlx_alias.search.cache import FeatureCache
from mlx_alias.search.discrete import token_gradients
from mlx_alias.search.driver import CALIBRATION_PROMPTS
from mlx_alias.search.objective import ObjectiveConfig
from mlx_alias.search.phase import SearchContext, ids_of
from mlx_alias.search.soft import SoftConfig, SoftPromptPhase
from mlx_alias.search.task import category_task
from mlx_alias.search.vocab import allowed_tokens
from mlx_alias.tokenizer import load_tokenizer

# (score, mask); None: scaled to the model's outputs on the random aliases (``Scorer.calibrated``)
TEMPERATURES = ((None, None), (0.05, 1.0), (0.01, 1.0), (0.01, 0.03))
ASCENT = SoftConfig(init="random", steps=40, patience=40, evaluate_every=5)
MISLEADING = 0.85  # an alias above the planted prompt's surrogate must reach this of its exact score


def ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable")


def ascended(ctx: SearchContext, starts: int, calibration: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The projections that ``starts`` soft ascents from random tokens meet and score in full,
    under the surrogate scaled as the search scales it."""
    ctx.objective = ctx.scorer.calibrated(ids_of(ctx.tokenizer, calibration))
    phase = SoftPromptPhase(ctx, dataclasses.replace(ASCENT, starts=starts))
    while not phase.done:
        phase.step()
    return list(ctx.seen)


def measure(
    seed: int,
    prompt: str,
    images: int,
    randoms: int,
    neighbours: int,
    fillers: int,
    plain_vocabulary: bool = False,
    ascents: int = 8,
) -> dict:
    tokenizer = load_tokenizer()
    allowed = allowed_tokens(tokenizer)
    pool = np.flatnonzero(allowed)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        model, dataset, hidden, threshold, _ = world(seed, prompt, Path(tmp), images, plain_vocabulary=plain_vocabulary)
        objective = ObjectiveConfig(threshold=threshold)
        task = category_task(
            model,
            FeatureCache(model, Path(tmp) / "mlx", None),
            dataset,
            1,
            holdout_fraction=0.34,
            seed=seed,
            config=objective,
        )
        planted = tuple(hidden.content)
        random_aliases = [tuple(int(t) for t in rng.choice(pool, len(planted))) for _ in range(randoms)]
        near = []
        for position in range(len(planted)):
            for token in rng.choice(pool, neighbours):
                alias = list(planted)
                alias[position] = int(token)
                near.append(tuple(alias))
        ctx = SearchContext(model, task.train, tokenizer, allowed, len(planted), rng)
        table = ctx.embeddings()
        vectors = np.array(table.astype(mx.float32))
        similar = []
        for position, token in enumerate(planted):
            distance = np.where(allowed, ((vectors - vectors[token]) ** 2).sum(1), np.inf)
            distance[token] = np.inf
            for other in np.argsort(distance)[:neighbours]:
                alias = list(planted)
                alias[position] = int(other)
                similar.append(tuple(alias))
        climbed = []
        if ascents:  # a context of its own: the other probes draw from ``rng`` as before
            climbed = ascended(
                SearchContext(model, task.train, tokenizer, allowed, len(planted), np.random.default_rng([seed, 1])),
                ascents,
                random_aliases[:CALIBRATION_PROMPTS],
            )
        aliases = [planted, *random_aliases, *near, *climbed]
        exact = np.array([r.score for r in task.train.exact(ids_of(tokenizer, aliases))])
        similar_exact = np.array([r.score for r in task.train.exact(ids_of(tokenizer, similar))])

        fidelity, gradient_ranks = {}, {}
        for temperature, mask_temperature in TEMPERATURES:
            task.train.config = dataclasses.replace(
                objective, temperature=temperature, mask_temperature=mask_temperature
            )
            task.train.config = task.train.calibrated(ids_of(tokenizer, random_aliases[:CALIBRATION_PROMPTS]))
            label = (
                "calibrated " if temperature is None else ""
            ) + f"{task.train.config.temperature:.3g}, {task.train.config.mask_temperature:.3g}"
            rows = [mx.array(row[None]) for row in ids_of(tokenizer, aliases)]
            surrogate = np.array([float(task.train.surrogate(model.token_embeddings(r), r == 0)) for r in rows])
            fidelity[label] = {
                "rank_correlation": float(np.corrcoef(ranks(exact), ranks(surrogate))[0, 1]),
                "planted": float(surrogate[0]),
                "best_other": float(surrogate[1:].max()),
                "misleading": int(((surrogate > surrogate[0]) & (exact < MISLEADING * exact[0])).sum()),
            }
            found = []
            for position in range(len(planted)):
                for token in rng.choice(pool, fillers):
                    alias = list(planted)
                    alias[position] = int(token)
                    grad = token_gradients(ctx, tuple(alias), table)[position]
                    grad = np.where(allowed, grad, -np.inf)
                    found.append(int((grad > grad[planted[position]]).sum()))
            gradient_ranks[label] = found
    return {
        "seed": seed,
        "prompt": prompt,
        "threshold": threshold,
        "allowed": int(allowed.sum()),
        "planted": float(exact[0]),
        "random_max": float(exact[1 : 1 + randoms].max()),
        "random_median": float(np.median(exact[1 : 1 + randoms])),
        "neighbour_max": float(exact[1 + randoms :].max()),
        "neighbour_median": float(np.median(exact[1 + randoms :])),
        "embedding_neighbour_max": float(similar_exact.max()),
        "embedding_neighbour_median": float(np.median(similar_exact)),
        "ascended": len(climbed),
        "fidelity": fidelity,
        "gradient_ranks": gradient_ranks,
    }


def show(row: dict) -> str:
    lines = [
        f"seed {row['seed']}, {row['prompt']!r}: planted {row['planted']:.3f}; random aliases median "
        f"{row['random_median']:.3f}, max {row['random_max']:.3f}; one-token neighbours median "
        f"{row['neighbour_median']:.3f}, max {row['neighbour_max']:.3f}; embedding neighbours median "
        f"{row['embedding_neighbour_median']:.3f}, max {row['embedding_neighbour_max']:.3f}",
        f"surrogate fidelity over these and {row['ascended']} projections met by soft ascents:",
        "| temperatures (score, mask) | surrogate rank corr. with exact | surrogate: planted / best other | "
        f"misleading (surrogate above planted, exact below {MISLEADING}) | "
        f"planted token's gradient rank (of {row['allowed']}), median [all] |",
        "|---|---|---|---|---|",
    ]
    for t, f in row["fidelity"].items():
        r = row["gradient_ranks"][t]
        lines.append(
            f"| {t} | {f['rank_correlation']:.3f} | {f['planted']:.3f} / {f['best_other']:.3f} | "
            f"{f['misleading']} | {np.median(r):.0f} {r} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--prompt", default="velvet lantern")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--randoms", type=int, default=30, help="random aliases scored")
    parser.add_argument("--neighbours", type=int, default=5, help="one-token and embedding neighbours per position")
    parser.add_argument("--fillers", type=int, default=3, help="gradient probes per position and temperature")
    parser.add_argument(
        "--ascents", type=int, default=8, help="soft ascents whose projections join the fidelity aliases (0: none)"
    )
    parser.add_argument(
        "--plain-vocabulary",
        action="store_true",
        help="init's unstructured token table instead of the tiny preset's low-rank one",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [
        measure(
            s,
            args.prompt,
            args.images,
            args.randoms,
            args.neighbours,
            args.fillers,
            args.plain_vocabulary,
            args.ascents,
        )
        for s in args.seeds
    ]
    print(json.dumps({"rows": rows}) if args.json else "\n\n".join(map(show, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
