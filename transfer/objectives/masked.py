"""Masked autoencoder, in the spirit of MAE (He et al. 2021) with a convolutional encoder:
reconstruct each image from a copy with random square patches hidden."""

from __future__ import annotations

import keras
import tensorflow as tf

from transfer.objectives import autoencoder
from transfer.objectives.autoencoder import LEARNING_RATE, VALIDATES, callbacks, report  # noqa: F401

NAME = "masked"
MASK_GRID = 8  # images are split into MASK_GRID x MASK_GRID patches
MASK_RATIO = 0.5


class Masked(autoencoder.Reconstruction):
    def corrupt(self, x):
        """Zero a random MASK_RATIO of the cells of a MASK_GRID x MASK_GRID grid, per image."""
        shape = tf.shape(x)
        cells = keras.random.uniform([shape[0], MASK_GRID, MASK_GRID, 1], seed=self.noise)
        keep = tf.image.resize(tf.cast(cells >= MASK_RATIO, x.dtype), shape[1:3], method="nearest")
        return x * keep


def build(encoder, blocks, shape, options) -> keras.Model:
    return autoencoder.build(encoder, blocks, shape, options, model_class=Masked)
