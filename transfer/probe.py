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

Before the first epoch it also scores the encoder as pretraining found it (random weights,
or a backbone's own) and the raw pixels, on the same images, so the run ends with a plain
verdict (`verdict`): whether the pretrained features separate the probe's classes better
than the encoder they started from, by a paired 95% interval over the scored images.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from transfer.evaluation import knn_hits, paired_difference  # the same k-NN as `transfer evaluate`


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
    so the history's column exists from the first row). Built before training, it scores the
    encoder as it is then (`start`) and the raw pixels (`pixels`) on the same images."""

    def __init__(self, encoder: keras.Model, images: np.ndarray, labels: np.ndarray, n_classes: int, epochs: int,
                 seed: int = 0, every: int | None = None):
        super().__init__()
        self.encoder, self.images, self.labels, self.n_classes = encoder, images, labels, n_classes
        self.reference, self.scored = split_halves(labels, seed)
        self.epochs, self.every = epochs, every or max(1, epochs // 20)
        self._pooled = None
        self.pixels_correct = self._correct(images.reshape(len(images), -1))
        self.start_correct = self._correct(self.features(images))  # before any epoch: what pretraining starts from
        self.last_correct = None
        self.last = float("nan")

    @property
    def start(self) -> float:
        return float(self.start_correct.mean())

    @property
    def pixels(self) -> float:
        return float(self.pixels_correct.mean())

    def features(self, images: np.ndarray) -> np.ndarray:
        if self._pooled is None:
            encoder = self.encoder
            self._pooled = tf.function(lambda x: tf.reduce_mean(encoder(x, training=False), axis=(1, 2)))
        return np.concatenate([np.asarray(self._pooled(tf.constant(images[i : i + 256])))
                               for i in range(0, len(images), 256)])

    def _correct(self, f: np.ndarray) -> np.ndarray:
        """Whether the k-NN vote of the reference half labels each scored image right."""
        return knn_hits(f[self.reference], self.labels[self.reference], f[self.scored], self.labels[self.scored],
                        self.n_classes)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        n = epoch + 1
        if n % self.every and n != self.epochs and epoch != 0:
            logs["probe_knn"] = float("nan")
            return
        logs["probe_knn"] = self.score()

    def score(self) -> float:
        """The k-NN accuracy of the encoder as it is now (`last`, `last_correct`)."""
        self.last_correct = self._correct(self.features(self.images))
        self.last = float(self.last_correct.mean())
        return self.last


def verdict(watch: OnlineProbe, started_from: str) -> str:
    """One plain line: did pretraining beat the encoder it started from (`started_from`: "random
    weights", or a backbone's) on the probe's images? A "warning:" line when the paired 95%
    interval does not lie above zero."""
    after = watch.last_correct if watch.last_correct is not None else watch.start_correct
    mean, low, high = paired_difference(after, watch.start_correct)
    scores = (f"k-NN {100 * after.mean():.1f}% on the probe's {len(after)} scored images, "
              f"{100 * watch.start:.1f}% before pretraining ({started_from}), {100 * watch.pixels:.1f}% on raw pixels")
    interval = f"{mean:+.1f} points [95% CI {low:+.1f}, {high:+.1f}]"
    if low > 0:
        return f"probe: pretraining learned features its start lacked: {scores}; {interval}"
    return (f"warning: the pretrained features tell the probe's classes apart no better than the encoder before "
            f"pretraining: {scores}; {interval}")
