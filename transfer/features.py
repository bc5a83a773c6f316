"""Feature passes: a model's outputs for the images of an image set, computed a batch at a
time from the stream (bounded memory), with the labels and positions of the images that
decoded. One implementation for every consumer (evaluate, select, embed, label budgets,
a classifier's predictions on its test split)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from transfer import stopping, stream

BATCH = 256


def compute(model, images: stream.ImageSet, batch_size: int = BATCH):
    """(features float32 (n, d), labels int64 (n,), positions (n,)) of `model` (a Keras model,
    or None for the raw pixels, flattened) over the images of `images` that decode."""
    call = None if model is None else tf.function(lambda x: model(x, training=False))
    feats, labels, positions = [], [], []
    for pos, x, y in images.records().batch(batch_size).as_numpy_iterator():
        stopping.check()  # a safe point for a stop signal, between batches
        f = x.reshape(len(x), -1) if call is None else np.asarray(call(tf.constant(x)))
        feats.append(f.reshape(len(f), -1).astype(np.float32))
        labels.append(y)
        positions.append(pos)
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels).astype(np.int64), np.concatenate(positions)
