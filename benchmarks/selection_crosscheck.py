"""The toolkit's typiclust and probcover beside scikit-activeml's (1.0), on the same features.

Issue #50: where a well-kept library does the job as well, use it. For each data set (the
pool outside the test split; raw pixels, L2-normalized, the features every selection is
compared with), budget (labels in all, a cold start) and seed, each implementation chooses;
the table gives the classes the choice covers, how well its labels label the rest of the pool
by 1-NN (cosine), and seconds, as mean over seeds. Both are given the same number of
clusters (budget) and, for typiclust, the authors' 20 neighbours (scikit-activeml's default
is 5), and probcover the authors' purity 0.95.

    pip install -e ".[bench]"
    python benchmarks/selection_crosscheck.py [--data digits,animals] [--budgets 10,20] [--seeds 0,1,2,3,4]
        [--rules typiclust,probcover] [--restarts 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SIZE = {"digits": 16, "animals": 28, "fills": 28, "patches": 28}


def pool_features(data: str):
    """(L2-normalized raw pixels of the pool, its labels): what `select --encoder pixels` reads."""
    from transfer import builtins, evaluation, splits

    found = splits.open_labeled(data, None, 0.2, SIZE[data], None, log=lambda m: None)
    images = builtins.load(data, SIZE[data], None, True, split="all").images[found.pool]
    return evaluation.normalized(images.reshape(len(images), -1)), found.source.labels[found.pool]


def propagation(f: np.ndarray, y: np.ndarray, chosen: np.ndarray) -> float:
    """Accuracy of labeling every pool image by its nearest chosen image (cosine)."""
    nearest = np.argmax(f @ f[chosen].T, axis=1)
    return float(np.mean(y[chosen][nearest] == y))


def ours(rule: str, f, budget: int, seed: int, restarts: int | None = None) -> np.ndarray:
    """The toolkit's choice; `restarts`: its full k-means runs (default selection.KMEANS_RESTARTS)."""
    from transfer import selection

    default = selection.KMEANS_RESTARTS
    selection.KMEANS_RESTARTS = restarts or default
    try:
        return selection.select(rule, f, budget, [], seed)
    finally:
        selection.KMEANS_RESTARTS = default


def theirs(rule: str, f, budget: int, seed: int) -> np.ndarray:
    from skactiveml.pool import ProbCover, TypiClust
    from skactiveml.utils import MISSING_LABEL

    y = np.full(len(f), MISSING_LABEL)
    strategy = (TypiClust(random_state=seed, k=20) if rule == "typiclust"
                else ProbCover(n_classes=budget, alpha=0.95, random_state=seed))
    return np.asarray(strategy.query(f, y, batch_size=budget), dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits,animals")
    parser.add_argument("--budgets", default="10,20")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rules", default="typiclust,probcover")
    parser.add_argument("--restarts", default="",
                        help="also the toolkit with this many full k-means runs (e.g. 1; the default's is "
                             "selection.KMEANS_RESTARTS)")
    args = parser.parse_args()
    from transfer import selection

    variants = [(f"transfer ({selection.KMEANS_RESTARTS} k-means runs)", ours)]
    variants += [(f"transfer ({r} k-means run{'s' * (r > 1)})", lambda *a, r=r: ours(*a, restarts=r))
                 for r in map(int, filter(None, args.restarts.split(",")))]
    variants.append(("scikit-activeml", theirs))
    print("| data | budget | rule | implementation | classes covered | 1-NN labels the pool % | seconds |")
    print("|---|---:|---|---|---:|---:|---:|")
    for data in args.data.split(","):
        f, y = pool_features(data)
        for budget in map(int, args.budgets.split(",")):
            for rule in args.rules.split(","):
                for name, pick in variants:
                    covered, labeled, seconds = [], [], []
                    for seed in map(int, args.seeds.split(",")):
                        start = time.perf_counter()
                        chosen = pick(rule, f, budget, seed)
                        seconds.append(time.perf_counter() - start)
                        assert len(set(chosen.tolist())) == budget, (name, rule, len(chosen))
                        covered.append(len(set(y[chosen].tolist())))
                        labeled.append(100 * propagation(f, y, chosen))
                    print(f"| {data} | {budget} | {rule} | {name} | {statistics.mean(covered):.1f} | "
                          f"{statistics.mean(labeled):.1f} | {statistics.mean(seconds):.2f} |", flush=True)


if __name__ == "__main__":
    main()
