"""Convolutional autoencoders: encoder + mirrored decoder trained to reproduce the input.

Three objectives share this module:
- `autoencoder`: reconstruct the image from itself;
- `denoising`: reconstruct it from a copy with Gaussian noise added (Vincent et al. 2008);
- `masked`: reconstruct it from a copy with random square patches hidden (in the spirit
  of MAE, He et al. 2021, with a convolutional encoder).
Corruption is drawn afresh for every batch by a `tf.data` map.

The reconstruction error on held-out clean images is reported next to two
trivial baselines, an all-zeros output and the mean training image, because an
autoencoder that collapses to one of them is a common and silent failure.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from transfer import models, objectives, training
from transfer.objectives import ObjectiveResult

NAME = "autoencoder"
PREVIEW = 8
NOISE_STD = 0.2
MASK_GRID = 8  # images are split into MASK_GRID x MASK_GRID patches
MASK_RATIO = 0.5


MEAN_SAMPLE = 4096  # training images averaged for the mean-image baseline


def reconstruction_baselines(train_images: np.ndarray, val_images: np.ndarray) -> dict:
    """Mean squared error of the trivial reconstructions on val_images."""
    mean_image = train_images.mean(axis=0, keepdims=True)
    return {
        "baseline_zeros_mse": float(np.mean(val_images**2)),
        "baseline_mean_mse": float(np.mean((val_images - mean_image) ** 2)),
    }


def add_noise(x):
    return tf.clip_by_value(x + tf.random.normal(tf.shape(x), stddev=NOISE_STD), 0.0, 1.0)


def mask_patches(x):
    """Zero a random MASK_RATIO of the cells of a MASK_GRID x MASK_GRID grid, per image."""
    shape = tf.shape(x)
    keep = tf.cast(tf.random.uniform([shape[0], MASK_GRID, MASK_GRID, 1]) >= MASK_RATIO, x.dtype)
    keep = tf.image.resize(keep, shape[1:3], method="nearest")
    return x * keep


CORRUPTIONS = {"autoencoder": None, "denoising": add_noise, "masked": mask_patches}


def _pair(corrupt):
    """batch -> (input, target): the target is the clean image, the input a corrupted copy."""

    def pair(batch):
        return (corrupt(batch) if corrupt else batch), batch

    return pair


def train_reconstruction(name, encoder, blocks, train, val_images, *, epochs, batch_size,
                         learning_rate, history_path, log, backup_dir=None, seed=0):
    corrupt = CORRUPTIONS[name]
    channels = train.shape[-1]
    decoder = models.build_decoder(encoder, blocks, channels)
    autoencoder = models.build_autoencoder(encoder, decoder)
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    training.fit(
        autoencoder,
        train.batches(batch_size, True, seed, transform=_pair(corrupt)),
        None,
        epochs=epochs,
        batch_size=None,
        history_path=history_path,
        backup_dir=backup_dir,
        log=log,
        log_prefix="pretrain ",
        validation_data=objectives.in_memory(val_images).batches(batch_size, False, transform=_pair(corrupt)),
    )
    shown = val_images if corrupt is None else np.asarray(corrupt(tf.constant(val_images)))
    recon = autoencoder.predict(shown, batch_size=batch_size, verbose=0)
    mse = float(np.mean((recon - val_images) ** 2))
    metrics = {"recon_mse": mse, **reconstruction_baselines(train.sample(MEAN_SAMPLE), val_images),
               # forward + backward ~ 3 forward passes (the usual rule for conv nets)
               "train_flops_per_image": 3 * models.forward_flops(autoencoder)}
    best_trivial = min(metrics["baseline_zeros_mse"], metrics["baseline_mean_mse"])
    metrics["collapsed"] = bool(not np.isfinite(mse) or mse >= 0.9 * best_trivial)
    warnings = []
    if metrics["collapsed"]:
        warnings.append(
            f"the autoencoder is no better than a trivial output: reconstruction MSE {mse:.5f} vs "
            f"{best_trivial:.5f} for the best of all-zeros/mean-image; its features are likely useless"
        )
    return ObjectiveResult(metrics=metrics, preview=recon[:PREVIEW], warnings=warnings)


def train(encoder, blocks, train, val_images, **kwargs):
    return train_reconstruction(NAME, encoder, blocks, train, val_images, **kwargs)
