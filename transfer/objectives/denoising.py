"""Denoising autoencoder (Vincent et al. 2008): reconstruct each image from a copy with Gaussian
noise added."""

from __future__ import annotations

import keras
import tensorflow as tf

from transfer.objectives import autoencoder
from transfer.objectives.autoencoder import LEARNING_RATE, VALIDATES, callbacks, report  # noqa: F401

NAME = "denoising"
NOISE_STD = 0.2


class Denoising(autoencoder.Reconstruction):
    def corrupt(self, x):
        return tf.clip_by_value(x + keras.random.normal(tf.shape(x), stddev=NOISE_STD, seed=self.noise), 0.0, 1.0)


def build(encoder, blocks, shape, options) -> keras.Model:
    return autoencoder.build(encoder, blocks, shape, options, model_class=Denoising)
