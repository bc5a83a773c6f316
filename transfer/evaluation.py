"""The standard evaluation of self-supervised features, on features already computed.

- weighted k-NN (k = 20, cosine similarity, votes weighted by exp(similarity / 0.07): the
  monitor of InstDisc, solo-learn and lightly) with every pool image labeled;
- a linear probe on every pool label (multinomial logistic regression on standardized
  features, its L2 strength chosen by cross-validation on the pool: `transfer.heads`);
- from a few labels per class (1, 4, 10; several random draws from the pool): 1-NN by
  cosine similarity, and the linear probe;
- without any label: RankMe, the effective rank of the features (`rankme`).

Every score is on the test images, which are never among the pool. The same code serves
`transfer evaluate`, the online probe of pretraining (`transfer.probe`) and the
benchmarks, so the numbers are comparable everywhere. Pure numpy and scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from transfer import heads

K = 20
TEMPERATURE = 0.07
BUDGETS = (1, 4, 10)  # labels per class for the few-label scores
DRAWS = 5
PROBE_CV_IMAGES = 2000  # the probe's L2 strength is cross-validated on at most this many pool images


def normalized(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float32).reshape(len(f), -1)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)


def knn_predict(train_f: np.ndarray, train_y: np.ndarray, query_f: np.ndarray, n_classes: int, k: int = K,
                temperature: float = TEMPERATURE, batch: int = 1024) -> np.ndarray:
    """The weighted k-NN vote of (train_f, train_y) for each row of query_f (cosine similarity)."""
    a, b = normalized(train_f), normalized(query_f)
    k = min(k, len(a))
    out = np.empty(len(b), dtype=np.int64)
    for start in range(0, len(b), batch):  # a block of similarities at a time: memory stays bounded
        sim = b[start:start + batch] @ a.T
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sim, nearest, axis=1) / temperature)
        votes = np.zeros((len(sim), n_classes))
        np.add.at(votes, (np.repeat(np.arange(len(sim)), k), train_y[nearest].ravel()), weights.ravel())
        out[start:start + batch] = votes.argmax(axis=1)
    return out


def knn_hits(train_f, train_y, test_f, test_y, n_classes: int, k: int = K,
             temperature: float = TEMPERATURE) -> np.ndarray:
    """Whether the weighted k-NN vote labels each test row right (for paired comparisons)."""
    return knn_predict(train_f, train_y, test_f, n_classes, k, temperature) == test_y


def knn_accuracy(train_f, train_y, test_f, test_y, n_classes: int, k: int = K,
                 temperature: float = TEMPERATURE) -> float:
    return float(np.mean(knn_hits(train_f, train_y, test_f, test_y, n_classes, k, temperature)))


def nearest_accuracy(train_f, train_y, test_f, test_y) -> float:
    """1-NN by cosine similarity."""
    a, b = normalized(train_f), normalized(test_f)
    hits = 0
    for start in range(0, len(b), 1024):
        hits += int(np.sum(train_y[np.argmax(b[start:start + 1024] @ a.T, axis=1)] == test_y[start:start + 1024]))
    return hits / max(len(b), 1)


def probe_accuracy(train_f, train_y, test_f, test_y, n_classes: int, seed: int = 0) -> float:
    """A linear probe: logistic regression on standardized features, its inverse L2 strength
    chosen by cross-validation on (a sample of) the training features (a fixed C = 1 when
    some class has a single example)."""
    from sklearn.linear_model import LogisticRegression

    train_f = np.asarray(train_f, np.float32).reshape(len(train_f), -1)
    test_f = np.asarray(test_f, np.float32).reshape(len(test_f), -1)
    mean, var = heads.standardization(train_f)
    scale = np.sqrt(var + 1e-6)
    z, zt = (train_f - mean) / scale, (test_f - mean) / scale
    sample = np.arange(len(z))
    if len(z) > PROBE_CV_IMAGES:
        sample = np.sort(np.random.default_rng(seed).choice(len(z), PROBE_CV_IMAGES, replace=False))
    _, _, c, _ = heads.cross_validated(z[sample], train_y[sample], n_classes)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=c, max_iter=3000).fit(z, train_y)
    return float(np.mean(clf.predict(zt) == test_y))


def draw_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of `per_class` random images of every class (all of a smaller class)."""
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def scores(pool_f, pool_y, test_f, test_y, n_classes: int, budgets=BUDGETS, draws: int = DRAWS,
           seed: int = 0, probe: bool = True, hits: np.ndarray | None = None) -> dict:
    """Every score of the evaluation, as {name: value}: `knn` and `probe` (every pool label),
    and for each budget B `nn1_B` / `probe_B` (mean over the draws) with `_std` beside.
    `hits`: the k-NN's `knn_hits` when the caller has them already."""
    if hits is None:
        hits = knn_hits(pool_f, pool_y, test_f, test_y, n_classes)
    out = {"knn": float(np.mean(hits))}
    if probe:
        out["probe"] = probe_accuracy(pool_f, pool_y, test_f, test_y, n_classes, seed)
    for budget in budgets:
        rng = np.random.default_rng(seed)
        nn1, lin = [], []
        for _ in range(draws):
            chosen = draw_per_class(pool_y, budget, rng)
            nn1.append(nearest_accuracy(pool_f[chosen], pool_y[chosen], test_f, test_y))
            if probe:
                lin.append(probe_accuracy(pool_f[chosen], pool_y[chosen], test_f, test_y, n_classes, seed))
        out[f"nn1_{budget}"], out[f"nn1_{budget}_std"] = float(np.mean(nn1)), float(np.std(nn1))
        if probe:
            out[f"probe_{budget}"], out[f"probe_{budget}_std"] = float(np.mean(lin)), float(np.std(lin))
    return out


RANKME_SAMPLES = 25_600  # the images RankMe reads at most (as Garrido et al.)
RANKME_EPSILON = 1e-7


def rankme(f: np.ndarray, samples: int = RANKME_SAMPLES, seed: int = 0) -> float:
    """RankMe (Garrido, Balestriero, Najman and LeCun, ICML 2023), a label-free measure of
    features: exp(-sum_k p_k log p_k) with p_k = sigma_k / sum(sigma) + 1e-7, the singular
    values sigma of the (N, D) feature matrix (at most `samples` rows, drawn with `seed`). From 1
    (every image on one line) to min(N, D) (every direction used alike)."""
    f = np.asarray(f, dtype=np.float64).reshape(len(f), -1)
    if len(f) > samples:
        f = f[np.random.default_rng(seed).choice(len(f), samples, replace=False)]
    sigma = np.linalg.svd(f, compute_uv=False)
    p = sigma / max(sigma.sum(), 1e-12) + RANKME_EPSILON
    return float(np.exp(-(p * np.log(p)).sum()))


def paired_difference(after: np.ndarray, before: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the difference of two 0/1 correctness vectors on the same images, in
    points, with its 95% normal interval (the paired difference's standard error)."""
    d = np.asarray(after, float) - np.asarray(before, float)
    mean = 100 * float(d.mean())
    half = 100 * 1.96 * float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else float("inf")
    return mean, mean - half, mean + half


def error_ratio(accuracy: float, reference: float) -> float:
    """(1 - accuracy) / (1 - reference): below 1, fewer errors than the reference (raw pixels)."""
    return (1.0 - accuracy) / max(1.0 - reference, 1e-9)
