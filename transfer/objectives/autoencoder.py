"""Convolutional autoencoder: the encoder + a mirrored decoder trained to reproduce the input.

`Reconstruction` is the training model for the three reconstruction objectives:
here the input is the clean image; `denoising` and `masked` subclass it with a
corruption drawn afresh for every batch inside the train step.

The reconstruction error on held-out clean images is reported next to two
trivial baselines, an all-zeros output and the mean training image, because an
autoencoder that collapses to one of them is a common and silent failure.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from transfer import distribute, models
from transfer.objectives.base import Options, Report

NAME = "autoencoder"
LEARNING_RATE = 1e-3
VALIDATES = True
PREVIEW = 8
MEAN_SAMPLE = 4096  # training images averaged for the mean-image baseline


class Reconstruction(keras.Model):
    """encoder -> decoder, trained to give back the clean image from `corrupt(image)`."""

    def __init__(self, encoder, decoder, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.noise = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def corrupt(self, x):
        """The input the model sees for clean images x (here: x itself)."""
        return x

    def call(self, inputs, training=False):
        return self.decoder(self.encoder(inputs, training=training), training=training)

    def _loss(self, x, training):
        return tf.reduce_mean(tf.square(self(self.corrupt(x), training=training) - x))

    def train_step(self, data):
        loss = distribute.gradient_step(self.optimizer, self.trainable_variables, lambda: self._loss(data, True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        self.loss_tracker.update_state(self._loss(data, False))
        return {"loss": self.loss_tracker.result()}


def build(encoder, blocks, shape, options: Options, model_class=Reconstruction) -> keras.Model:
    model = model_class(encoder, models.build_decoder(encoder, blocks, shape[-1]), seed=options.seed)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate))
    model.build((None, *shape))  # built, so that a backup can be restored into it
    model.optimizer.build(model.trainable_variables)  # now: slots made in the step's first trace retrace it
    return model


def callbacks(model, run_dir) -> list:
    return []


def reconstruction_baselines(train_images: np.ndarray, val_images: np.ndarray) -> dict:
    """Mean squared error of the trivial reconstructions on val_images."""
    mean_image = train_images.mean(axis=0, keepdims=True)
    return {
        "baseline_zeros_mse": float(np.mean(val_images**2)),
        "baseline_mean_mse": float(np.mean((val_images - mean_image) ** 2)),
    }


def report(model: Reconstruction, train, val_images: np.ndarray) -> Report:
    recon = np.asarray(model.predict(np.asarray(model.corrupt(tf.constant(val_images))), verbose=0))
    mse = float(np.mean((recon - val_images) ** 2))
    metrics = {"recon_mse": mse, **reconstruction_baselines(train.sample(MEAN_SAMPLE), val_images),
               # forward + backward ~ 3 forward passes (the usual rule for conv nets)
               "train_flops_per_image": 3 * (models.forward_flops(model.encoder) + models.forward_flops(model.decoder))}
    best_trivial = min(metrics["baseline_zeros_mse"], metrics["baseline_mean_mse"])
    metrics["collapsed"] = bool(not np.isfinite(mse) or mse >= 0.9 * best_trivial)
    warnings = []
    if metrics["collapsed"]:
        warnings.append(
            f"the autoencoder is no better than a trivial output: reconstruction MSE {mse:.5f} vs "
            f"{best_trivial:.5f} for the best of all-zeros/mean-image; its features are likely useless"
        )
    return Report(metrics=metrics, preview=recon[:PREVIEW], warnings=warnings)
