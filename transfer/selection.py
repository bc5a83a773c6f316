"""Which images to label, chosen from features already computed (no labels needed).

- `typiclust` (Hacohen, Dekel and Weinshall, ICML 2022; the authors' procedure): k-means of
  the L2-normalized features into (already labeled + budget) clusters (at most
  MAX_CLUSTERS); clusters of MIN_CLUSTER_SIZE images or fewer are left out; the clusters
  are visited fewest labeled images first, then largest first, and from each the most
  *typical* image not yet chosen is taken: typicality = 1 / mean distance to its K_NN
  nearest neighbours within the cluster (half the cluster when it is small). k-means keeps
  the best of KMEANS_RESTARTS runs (the authors' code: ten). Suited to
  small budgets: it labels the dense, representative images of every mode.
- `probcover` (Yehuda, Dekel, Hacohen and Weinshall, NeurIPS 2022; the authors' procedure):
  every image covers the ball of radius delta around it; the greedy max-coverage picks, each
  time, the image whose ball holds the most images not yet covered (by an image labeled or
  chosen). delta is the largest radius at which PURITY of the balls hold one k-means cluster
  only (k-means into labeled + budget clusters, as typiclust: the number of classes at one
  label per class, finer, so a smaller radius, as the budget grows). Once the pool is
  covered, the rest of the budget is chosen by kcenter. The authors report it above
  typiclust at the lowest budgets (CIFAR, SimCLR features); on the built-ins it covers fewer
  classes than typiclust (docs/selection.md).
- `kcenter` (Sener and Savarese, ICLR 2018, the greedy core-set): each next image is the one
  farthest from every image labeled or chosen so far; covers the feature space, suited to
  larger budgets.
- `random`: uniform, the baseline every selection is compared with.
- `margin` (the next rounds, once a classifier is trained: `select --model RUN`): uncertainty
  weighed by diversity, as cluster-margin sampling does it (Citovsky et al., NeurIPS 2021): the
  clusters and their order are typiclust's, and from each cluster the image the classifier is
  least sure of (the smallest margin between its two most probable classes) is taken. The
  cold-start rules above look at the features only; this one at what round 1 learned.

Every strategy returns positions into the feature rows, in the order to label them, never
one already labeled. numpy, scikit-learn (k-means, nearest neighbours) and scipy's sparse
matrices (ProbCover's graph).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.neighbors import NearestNeighbors

from transfer import vocabulary
from transfer.errors import TransferError
from transfer.evaluation import normalized

STRATEGIES = vocabulary.SELECTIONS
BY_FEATURES = vocabulary.BY_FEATURES
MIN_CLUSTER_SIZE = 5
MAX_CLUSTERS = 500
K_NN = 20
PURITY = 0.95  # ProbCover's alpha: the share of pure balls that sets delta
PURITY_SAMPLE = 5000  # delta's quantile is estimated from this many balls of a larger pool
MAX_EDGES = 5 * 10**7  # probcover's graph: about 20 bytes a pair while it is built, so at most about 1 GiB
CHUNK_ENTRIES = 2**24  # distances computed at a time (64 MB of float32), rows per chunk = this / pool size
FULL_KMEANS = 50  # up to this many clusters, full k-means; beyond, mini-batch k-means (as the authors)
# Full k-means runs from k-means++ starts, the best kept. The authors' ten chose no better on the
# built-ins than two, at 3-5.5x their time; one (scikit-activeml's and scikit-learn's default) split
# a mode of well-separated blobs on 2 seeds in 20, two on none (docs/selection.md).
KMEANS_RESTARTS = 2


def _distances(f: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Euclidean distances between unit rows of f and unit centres (|a-b|^2 = 2 - 2ab), (n, len(centres))."""
    return np.sqrt(np.maximum(2.0 - 2.0 * (f @ np.atleast_2d(centres).T), 0.0))


def _chunk(n: int) -> int:
    """Rows of an (rows, n) distance block that fit CHUNK_ENTRIES."""
    return max(1, CHUNK_ENTRIES // max(n, 1))


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
            return KMeans(n_clusters=n, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(features)
        return MiniBatchKMeans(n_clusters=n, batch_size=5000, n_init=3, random_state=seed).fit_predict(features)


def typiclust(features: np.ndarray, budget: int, labeled: np.ndarray, seed: int = 0) -> np.ndarray:
    f = normalized(features)
    return _by_clusters(f, budget, labeled, seed,
                        lambda members: typicality(f[members], min(K_NN, len(members) // 2)))


def margins(probabilities: np.ndarray) -> np.ndarray:
    """The classifier's margin per row: its most probable class's probability minus the second's."""
    top = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)
    return top[:, -1] - (top[:, -2] if top.shape[1] > 1 else 0.0)


def margin(features: np.ndarray, probabilities: np.ndarray, budget: int, labeled: np.ndarray,
           seed: int = 0) -> np.ndarray:
    """Typiclust's clusters, in its order; from each, the image of the smallest margin."""
    uncertain = -margins(probabilities)
    return _by_clusters(normalized(features), budget, labeled, seed, lambda members: uncertain[members])


def _by_clusters(f: np.ndarray, budget: int, labeled: np.ndarray, seed: int, score) -> np.ndarray:
    """k-means into (labeled + budget) clusters; clusters visited fewest labeled first, then
    largest; from each the free member of the highest `score(members)`."""
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
        best = members[np.argmax(score(members))]
        chosen.append(best)
        free[best] = -1
        turn += 1
    return np.array(chosen, dtype=np.int64)


def _sampled(n: int, seed: int) -> np.ndarray:
    """Every row of n, or PURITY_SAMPLE of them drawn at random (sorted) when there are more."""
    if n <= PURITY_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, PURITY_SAMPLE, replace=False))


def purity_radius(f: np.ndarray, assigned: np.ndarray, alpha: float = PURITY, seed: int = 0) -> float:
    """The largest delta at which `alpha` of the balls B(x, delta) hold only x's cluster: the
    ball is pure while delta <= the distance from x to the nearest row of another cluster, so
    delta is the (1 - alpha) quantile of those distances (from PURITY_SAMPLE balls at most)."""
    rows = _sampled(len(f), seed)
    other, step = np.empty(len(rows)), _chunk(len(f))
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
        d = _distances(f[part], f)
        d[assigned[part, None] == assigned[None, :]] = np.inf
        other[start:start + step] = d.min(axis=1)
    delta = float(np.sort(other)[int(np.floor(len(other) * (1.0 - alpha)))])  # alpha of them are >= delta
    return delta if np.isfinite(delta) else 2.0  # one cluster: every ball is pure (unit rows are <= 2 apart)


def expected_edges(f: np.ndarray, delta: float, seed: int = 0) -> float:
    """The pairs closer than delta, estimated from the balls of PURITY_SAMPLE rows at most."""
    rows = _sampled(len(f), seed)
    step = _chunk(len(f))
    inside = sum(int((_distances(f[rows[i:i + step]], f) < delta).sum()) for i in range(0, len(rows), step))
    return inside / len(rows) * len(f)


def ball_graph(f: np.ndarray, delta: float) -> sparse.csr_matrix:
    """graph[x, y] = 1 where |x - y| < delta: x's ball covers y (itself included), sparse, built
    a chunk of rows at a time."""
    rows, cols, step = [], [], _chunk(len(f))
    for start in range(0, len(f), step):
        x, y = np.nonzero(_distances(f[start:start + step], f) < delta)
        rows.append((x + start).astype(np.int32))
        cols.append(y.astype(np.int32))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(f), len(f)))


def probcover(features: np.ndarray, budget: int, labeled: np.ndarray, seed: int = 0,
              purity: float = PURITY) -> np.ndarray:
    f = normalized(features)
    assigned = clusters(f, min(max(len(labeled) + budget, 2), MAX_CLUSTERS, len(f)), seed)
    delta = purity_radius(f, assigned, purity, seed)
    edges = expected_edges(f, delta, seed)
    if edges > MAX_EDGES:
        raise TransferError(f"probcover's graph for these {len(f)} images would hold about {edges:,.0f} pairs "
                            f"(more than {MAX_EDGES:,}: about {20 * edges / 2**30:.1f} GiB): choose them with "
                            "typiclust or kcenter")
    graph = ball_graph(f, delta)
    uncovered = np.ones(len(f), dtype=np.float32)
    uncovered[graph[labeled].indices] = 0.0
    taken = np.zeros(len(f), dtype=bool)
    taken[labeled] = True
    chosen = []
    while len(chosen) < budget:
        degrees = np.asarray(graph @ uncovered).ravel()  # how many uncovered images each ball holds
        degrees[taken] = -1.0
        pick = int(np.argmax(degrees))
        if degrees[pick] <= 0:  # every image is covered
            break
        chosen.append(pick)
        taken[pick] = True
        uncovered[graph.indices[graph.indptr[pick]:graph.indptr[pick + 1]]] = 0.0
    if len(chosen) < budget and not taken.all():
        chosen += list(kcenter(features, budget - len(chosen), np.flatnonzero(taken), seed))
    return np.array(chosen, dtype=np.int64)


def kcenter(features: np.ndarray, budget: int, labeled: np.ndarray, seed: int = 0) -> np.ndarray:
    f = normalized(features)
    nearest = np.full(len(f), np.inf, dtype=np.float32)  # distance to the closest centre so far
    step = _chunk(len(f))
    for start in range(0, len(labeled), step):
        nearest = np.minimum(nearest, _distances(f, f[labeled[start:start + step]]).min(axis=1))
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


def select(strategy: str, features: np.ndarray, budget: int, labeled=(), seed: int = 0,
           purity: float | None = None, probabilities: np.ndarray | None = None) -> np.ndarray:
    """Positions of `budget` rows of `features` to label next (fewer when fewer are left), in
    order, none of `labeled` (positions already labeled). `purity`: probcover's (None: PURITY).
    `probabilities`: a classifier's class probabilities per row (`margin` needs them)."""
    labeled = np.unique(np.asarray(labeled, dtype=np.int64))
    if strategy not in (*STRATEGIES, *vocabulary.CLASSIFIER_SELECTIONS):
        raise TransferError(f"strategy must be one of {', '.join((*STRATEGIES, *vocabulary.CLASSIFIER_SELECTIONS))}. "
                            f"Received: strategy={strategy!r}")
    if budget < 1:
        raise TransferError(f"budget must be >= 1. Received: budget={budget}")
    if len(features) - len(labeled) < 1:
        raise TransferError("every image of the pool is already labeled: nothing left to select")
    if strategy == "random":
        return random(len(features), budget, labeled, seed)
    if strategy == "probcover":
        return probcover(features, budget, labeled, seed, PURITY if purity is None else purity)
    if strategy == "margin":
        if probabilities is None or len(probabilities) != len(features):
            raise TransferError("strategy margin needs a classifier's probabilities for every image (select --model)")
        return margin(features, probabilities, budget, labeled, seed)
    return (typiclust if strategy == "typiclust" else kcenter)(features, budget, labeled, seed)
