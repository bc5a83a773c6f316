"""Which images to label, chosen from features already computed (no labels needed).

- `typiclust` (Hacohen, Dekel and Weinshall, ICML 2022; the authors' procedure): k-means of
  the L2-normalized features into (already labeled + budget) clusters (at most
  MAX_CLUSTERS); clusters of MIN_CLUSTER_SIZE images or fewer are left out; the clusters
  are visited fewest labeled images first, then largest first, and from each the most
  *typical* image not yet chosen is taken: typicality = 1 / mean distance to its K_NN
  nearest neighbours within the cluster (half the cluster when it is small). Suited to
  small budgets: it labels the dense, representative images of every mode.
- `kcenter` (Sener and Savarese, ICLR 2018, the greedy core-set): each next image is the one
  farthest from every image labeled or chosen so far; covers the feature space, suited to
  larger budgets.
- `random`: uniform, the baseline every selection is compared with.

Every strategy returns positions into the feature rows, in the order to label them, never
one already labeled. Pure numpy and scikit-learn (k-means, nearest neighbours).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.neighbors import NearestNeighbors

from transfer.errors import TransferError
from transfer.evaluation import normalized

STRATEGIES = ("typiclust", "kcenter", "random")
MIN_CLUSTER_SIZE = 5
MAX_CLUSTERS = 500
K_NN = 20
FULL_KMEANS = 50  # up to this many clusters, full k-means; beyond, mini-batch k-means (as the authors)


def _distances(f: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Euclidean distances between unit rows of f and unit centres (|a-b|^2 = 2 - 2ab), (n, len(centres))."""
    return np.sqrt(np.maximum(2.0 - 2.0 * (f @ np.atleast_2d(centres).T), 0.0))


def typicality(features: np.ndarray, k: int) -> np.ndarray:
    """1 / (mean Euclidean distance to the k nearest other rows + 1e-5), per row."""
    k = max(1, min(k, len(features) - 1))
    if len(features) < 2:
        return np.ones(len(features))
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    return 1.0 / (distances[:, 1:].mean(axis=1) + 1e-5)  # column 0: the row itself


def clusters(features: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Cluster index of each row: k-means into n clusters (mini-batch beyond FULL_KMEANS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes on duplicated points
        if n <= FULL_KMEANS:
            return KMeans(n_clusters=n, n_init=10, random_state=seed).fit_predict(features)
        return MiniBatchKMeans(n_clusters=n, batch_size=5000, n_init=3, random_state=seed).fit_predict(features)


def typiclust(features: np.ndarray, budget: int, labeled: np.ndarray, seed: int = 0) -> np.ndarray:
    f = normalized(features)
    assigned = clusters(f, min(len(labeled) + budget, MAX_CLUSTERS, len(f)), seed)
    ids, sizes = np.unique(assigned, return_counts=True)
    existing = np.bincount(assigned[labeled], minlength=ids.max() + 1)[ids] if len(labeled) else np.zeros_like(ids)
    keep = sizes > MIN_CLUSTER_SIZE
    if not keep.any():  # a tiny pool: every cluster is small
        keep[:] = True
    ids, sizes, existing = ids[keep], sizes[keep], existing[keep]
    order = list(ids[np.lexsort((-sizes, existing))])  # fewest labeled first, then largest first
    free = assigned.copy()
    free[labeled] = -1
    chosen, turn = [], 0
    while len(chosen) < budget and (free >= 0).any():
        if not order:  # the kept clusters are used up: the small ones, largest first
            left, counts = np.unique(free[free >= 0], return_counts=True)
            order, turn = list(left[np.argsort(-counts, kind="stable")]), 0
        cluster = order[turn % len(order)]
        members = np.flatnonzero(free == cluster)
        if len(members) == 0:
            order.remove(cluster)  # the next cluster takes its turn
            continue
        best = members[np.argmax(typicality(f[members], min(K_NN, len(members) // 2)))]
        chosen.append(best)
        free[best] = -1
        turn += 1
    return np.array(chosen, dtype=np.int64)


def kcenter(features: np.ndarray, budget: int, labeled: np.ndarray, seed: int = 0) -> np.ndarray:
    f = normalized(features)
    nearest = np.full(len(f), np.inf, dtype=np.float32)  # distance to the closest centre so far
    for start in range(0, len(labeled), 1024):
        nearest = np.minimum(nearest, _distances(f, f[labeled[start:start + 1024]]).min(axis=1))
    chosen = []
    if not len(labeled):
        first = int(np.random.default_rng(seed).integers(len(f)))
        chosen.append(first)
        nearest = np.minimum(nearest, _distances(f, f[first])[:, 0])
    nearest[labeled] = -1.0
    while len(chosen) < budget:
        nearest[chosen] = -1.0
        pick = int(np.argmax(nearest))
        if nearest[pick] < 0:
            break
        chosen.append(pick)
        nearest = np.minimum(nearest, _distances(f, f[pick])[:, 0])
    return np.array(chosen, dtype=np.int64)


def random(n: int, budget: int, labeled: np.ndarray, seed: int = 0) -> np.ndarray:
    free = np.setdiff1d(np.arange(n), labeled)
    return np.random.default_rng(seed).permutation(free)[:budget].astype(np.int64)


def select(strategy: str, features: np.ndarray, budget: int, labeled=(), seed: int = 0) -> np.ndarray:
    """Positions of `budget` rows of `features` to label next (fewer when fewer are left), in
    order, none of `labeled` (positions already labeled)."""
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    if strategy not in STRATEGIES:
        raise TransferError(f"strategy must be one of {', '.join(STRATEGIES)}. Received: strategy={strategy!r}")
    if budget < 1:
        raise TransferError(f"budget must be >= 1. Received: budget={budget}")
    if len(features) - len(labeled) < 1:
        raise TransferError("every image of the pool is already labeled: nothing left to select")
    if strategy == "random":
        return random(len(features), budget, labeled, seed)
    return (typiclust if strategy == "typiclust" else kcenter)(features, budget, labeled, seed)
