"""An online probe: how well the features being pretrained separate a few labeled images.

While an encoder pretrains, a weighted k-nearest-neighbour classifier on its
average-pooled features (cosine similarity, k = 20, votes weighted by
exp(similarity / 0.07): the monitor of InstDisc and solo-learn; `transfer.evaluation`,
the code `transfer evaluate` scores with) is fitted to one
half of a small labeled set and scored on the other half, every few epochs. The
accuracy goes into the epoch's logs (`probe_knn`: the history, the progress lines,
the results row). It only watches: nothing is trained on the labels, and the
labeled images are drawn from outside the labeled source's test split, so the
test split a later fine-tune reports on is never looked at.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from transfer.evaluation import knn_accuracy  # the same k-NN as `transfer evaluate`


def split_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified half/half split of positions (the probe's reference and scored images)."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        first.append(members[: (len(members) + 1) // 2])
        second.append(members[(len(members) + 1) // 2 :])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


class OnlineProbe(keras.callbacks.Callback):
    """Adds `probe_knn` to the logs of every `every`-th epoch and the last (NaN in the others,
    so the history's column exists from the first row)."""

    def __init__(self, encoder: keras.Model, images: np.ndarray, labels: np.ndarray, n_classes: int, epochs: int,
                 seed: int = 0, every: int | None = None):
        super().__init__()
        self.encoder, self.images, self.labels, self.n_classes = encoder, images, labels, n_classes
        self.reference, self.scored = split_halves(labels, seed)
        self.epochs, self.every = epochs, every or max(1, epochs // 20)
        self.last = float("nan")
        self._pooled = None

    def features(self, images: np.ndarray) -> np.ndarray:
        if self._pooled is None:
            encoder = self.encoder
            self._pooled = tf.function(lambda x: tf.reduce_mean(encoder(x, training=False), axis=(1, 2)))
        return np.concatenate([np.asarray(self._pooled(tf.constant(images[i : i + 256])))
                               for i in range(0, len(images), 256)])

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        n = epoch + 1
        if n % self.every and n != self.epochs and epoch != 0:
            logs["probe_knn"] = float("nan")
            return
        f = self.features(self.images)
        self.last = knn_accuracy(f[self.reference], self.labels[self.reference], f[self.scored],
                                 self.labels[self.scored], self.n_classes)
        logs["probe_knn"] = self.last
