"""Convolutional autoencoder: encoder + mirrored decoder trained to reproduce the input.

Its reconstruction error on held-out images is reported next to two trivial
baselines, an all-zeros output and the mean training image, because an
autoencoder that collapses to one of them is a common and silent failure.
"""

from __future__ import annotations

import keras
import numpy as np

from transfer import models, training
from transfer.objectives import ObjectiveResult

NAME = "autoencoder"
PREVIEW = 8


def reconstruction_baselines(train_images: np.ndarray, val_images: np.ndarray) -> dict:
    """Mean squared error of the trivial reconstructions on val_images."""
    mean_image = train_images.mean(axis=0, keepdims=True)
    return {
        "baseline_zeros_mse": float(np.mean(val_images**2)),
        "baseline_mean_mse": float(np.mean((val_images - mean_image) ** 2)),
    }


def train(encoder, blocks, train_images, val_images, *, epochs, batch_size, learning_rate, history_path, log):
    channels = train_images.shape[-1]
    decoder = models.build_decoder(encoder, blocks, channels)
    autoencoder = models.build_autoencoder(encoder, decoder)
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    training.fit(
        autoencoder,
        train_images,
        train_images,
        epochs=epochs,
        batch_size=batch_size,
        history_path=history_path,
        log=log,
        log_prefix="pretrain ",
        validation_data=(val_images, val_images),
    )
    recon = autoencoder.predict(val_images, batch_size=batch_size, verbose=0)
    mse = float(np.mean((recon - val_images) ** 2))
    metrics = {"recon_mse": mse, **reconstruction_baselines(train_images, val_images)}
    best_trivial = min(metrics["baseline_zeros_mse"], metrics["baseline_mean_mse"])
    metrics["collapsed"] = bool(not np.isfinite(mse) or mse >= 0.9 * best_trivial)
    warnings = []
    if metrics["collapsed"]:
        warnings.append(
            f"the autoencoder is no better than a trivial output: reconstruction MSE {mse:.5f} vs "
            f"{best_trivial:.5f} for the best of all-zeros/mean-image; its features are likely useless"
        )
    return ObjectiveResult(metrics=metrics, preview=recon[:PREVIEW], warnings=warnings)
