"""An encoder's start learned without labels or gradients: k-means filters on whitened patches.

Coates & Ng (2011, "The importance of encoding versus training with sparse coding and vector
quantization"; "Learning feature representations with k-means", 2012) showed that the
centroids of k-means on whitened image patches make first-layer filters as good as those of
far costlier unsupervised learners; applied layer by layer (Dundar et al. 2015, "Convolutional
clustering for unsupervised learning"), every conv layer of an encoder gets filters this way.

For each conv layer, in the order the image meets them:

1. its input (the image, or the maps of the layers below, already set) on a sample of images;
2. `PATCHES` random kernel-sized patches of it (no more than it has), flattened; the patches
   keep their mean and contrast (no per-patch normalization: where grey level names the
   class, the filters see it);
3. ZCA whitening, with the eigenvalues floored at `WHITENING` times their mean;
4. spherical k-means (unit-length patches and centroids; scikit-learn's KMeans) with as many
   centroids as the layer has filters;
5. the filters: the centroids seen through the whitening (W c, so that filter . patch =
   centroid . whitened patch), each scaled to unit length;
6. the layer's BatchNorm moving statistics (or, without BatchNorm, its bias and a scale) set
   from the layer's outputs on the sample, so that each map enters the activation centred
   and with unit variance, as the "triangle" encoding centres its similarities.

A few seconds per layer on 2 cores, whatever the pool's size (the sample is bounded). The
pretraining objective then trains from these weights (`pretrain --start kmeans`), or
`--epochs 0` keeps them as they are.
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.cluster import KMeans

from transfer import stream

IMAGES = 3000  # images sampled to fit every layer's filters
PATCHES = 40_000  # patches per layer
WHITENING = 0.1  # the eigenvalue floor, as a fraction of the mean eigenvalue
ITERATIONS = 50  # k-means iterations at most
VARIANCE_FLOOR = 1e-6


def patches(x: np.ndarray, size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random size x size patches of the maps x (N, H, W, C), wholly inside them, flattened."""
    count, height, width, _ = x.shape
    which = rng.integers(0, count, n)
    rows = rng.integers(0, height - size + 1, n)[:, None] + np.arange(size)
    cols = rng.integers(0, width - size + 1, n)[:, None] + np.arange(size)
    return x[which[:, None, None], rows[:, :, None], cols[:, None, :], :].reshape(n, -1).astype(np.float32)


def whitening(p: np.ndarray, floor: float = WHITENING) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W): the ZCA whitening of the rows of p, (p - mean) @ W, eigenvalues floored at
    `floor` times their mean (W is symmetric)."""
    mean = p.mean(axis=0, dtype=np.float64)
    values, vectors = np.linalg.eigh(np.cov(p - mean, rowvar=False))  # in float64
    values = np.maximum(values, 0.0)
    return mean, (vectors / np.sqrt(values + floor * max(values.mean(), VARIANCE_FLOOR))) @ vectors.T


def unit(a: np.ndarray) -> np.ndarray:
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)


def filters(p: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` filters (rows, unit length) for patches p: spherical k-means on the whitened
    patches, the centroids mapped back through the whitening."""
    mean, w = whitening(p)
    z = unit((p - mean.astype(np.float32)) @ w.astype(np.float32))  # float32: 40,000 patches of 3x3x128 in 184 MB
    count = min(count, _distinct(z, count))
    centroids = KMeans(count, n_init=1, max_iter=ITERATIONS, random_state=seed).fit(z).cluster_centers_
    return unit(unit(centroids.astype(np.float64)) @ w)


def _distinct(z: np.ndarray, enough: int) -> int:
    """How many distinct rows z has, or `enough` when its first few thousand already have that
    many (no more centroids than distinct patches: a few repeated patterns, as in tiny test images)."""
    for n in (5000, len(z)):
        found = len(np.unique(z[:n].round(4), axis=0))
        if found >= enough:
            return enough
    return found


def _normalizer(encoder: keras.Model, conv) -> keras.layers.Layer | None:
    """The BatchNormalization layer right after `conv`, if any."""
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.input is conv.output:
            return layer
    return None


def sample(images: stream.ImageSet, seed: int) -> np.ndarray:
    """Up to IMAGES of `images`, drawn by the seed (the same on every worker) and decoded: what
    `start` fits the filters on, without reading the rest."""
    chosen = np.random.default_rng(seed).choice(len(images), min(len(images), IMAGES), replace=False)
    return stream.ImageSet(images.listing, images.positions[np.sort(chosen)], images.image_size).load().images


def _maps(layer, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """layer(x) in batches, in float32 (bfloat16 maps under mixed precision: statistics in float32)."""
    return np.concatenate([np.asarray(layer(x[i:i + batch]), np.float32) for i in range(0, len(x), batch)])


def start(encoder: keras.Model, images: np.ndarray, seed: int = 0, log=None) -> int:
    """Set every Conv2D of `encoder` (an --arch encoder taking images in [0, 1]) from k-means on
    patches of its input, bottom to top, on up to IMAGES of `images`; returns how many layers
    were set. A layer with more filters than distinct patches keeps its random extra filters."""
    rng = np.random.default_rng(seed)
    sample = images[np.sort(rng.choice(len(images), min(len(images), IMAGES), replace=False))]
    convs = [layer for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    if log:
        log(f"k-means start: the filters of {len(convs)} conv layers ({', '.join(str(c.filters) for c in convs)}) "
            f"from patches of {len(sample):,} images, bottom to top")
    for conv in convs:
        x = np.asarray(keras.Model(encoder.input, conv.input).predict(sample, batch_size=256, verbose=0), np.float32)
        size = conv.kernel_size[0]
        count = min(PATCHES, len(x) * (x.shape[1] - size + 1) * (x.shape[2] - size + 1))  # no more than there are
        chosen = filters(patches(x, size, count, rng), conv.filters, seed)
        weights = conv.get_weights()
        kernel = weights[0].copy()
        kernel[..., : len(chosen)] = chosen.T.reshape(size, size, kernel.shape[2], len(chosen))
        conv.set_weights([kernel, *[np.zeros_like(b) for b in weights[1:]]])
        out = _maps(conv, x)  # the layer's own maps from its input, not the whole encoder again
        mean, variance = out.mean(axis=(0, 1, 2)), out.var(axis=(0, 1, 2))
        norm = _normalizer(encoder, conv)
        if norm is not None:
            gamma, beta, _, _ = norm.get_weights()
            norm.set_weights([np.ones_like(gamma), np.zeros_like(beta), mean.astype(np.float32),
                              variance.astype(np.float32)])
        else:  # no BatchNorm: the layer itself centres and scales its maps
            scale = 1.0 / np.sqrt(variance + VARIANCE_FLOOR)
            conv.set_weights([(kernel * scale).astype(np.float32),
                              *([(-mean * scale).astype(np.float32)] if len(weights) > 1 else [])])
    return len(convs)
