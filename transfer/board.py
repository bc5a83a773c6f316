"""TensorBoard, the Keras way: `--tensorboard DIR` puts every run under `DIR/<run id>`.

- Each fit of the run (pretraining; fine-tuning's head, training, unfreezing and FixMatch
  phases) gets Keras's own `keras.callbacks.TensorBoard` in `DIR/<run id>/<phase>`: the
  epoch's losses and metrics (FixMatch's mask rate among them) and the learning rate, under
  `train/` and `validation/`.
- Pictures (the pretraining preview: views, reconstructions or samples, above the images
  they come from) as image summaries in `DIR/<run id>/images`.
- One HParams record per run in `DIR/<run id>` (TensorBoard's HParams dashboard): the
  settings that tell runs of a grid apart (method, objective, labels per class, seed, ...)
  and its final metrics (test accuracy and loss for a fine-tune; the objective's metrics
  for a pretraining), so that an experiment grid can be browsed as one table.

Only the chief writes under tf.distribute (the callers pass no directory on other workers).
Watch with `tensorboard --logdir DIR`.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

# Row fields recorded as hyperparameters, when the run has them (strings, numbers and booleans).
HPARAMS = ("command", "method", "objective", "encoder", "data", "arch", "image_size", "labels_per_class", "labels",
           "selection", "select_features", "seed",
           "freeze", "unfreeze_top", "readout", "head", "augment", "epochs", "batch_size", "learning_rate",
           "unlabeled", "experiment")
# Row fields recorded as the run's final metrics.
METRICS = ("test_accuracy", "test_loss", "train_accuracy", "view_agreement", "recon_mse", "probe_knn",
           "knn_accuracy", "probe_accuracy", "mask_rate", "seconds", "images_per_second")


def phase_dir(root: str | None, run_id: str, phase: str) -> Path | None:
    """Where a fit's TensorBoard logs go (None: no TensorBoard)."""
    return None if not root else Path(root) / run_id / phase


class EpochBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback that writes per epoch only.

    Keras's `on_train_batch_end` calls `summary.scalar` for every entry of every batch's logs
    even with `update_freq="epoch"` (no writer is set then, so nothing is written, but each
    call builds its ops: about 0.14 ms a batch). With no per-batch writing, graph or profiling
    asked for, that hook has nothing to do: it is the base class's no-op again (which also lets
    Keras dispatch batch callbacks asynchronously when no other callback needs them)."""

    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end


def callback(log_dir: Path) -> keras.callbacks.TensorBoard:
    """Keras's TensorBoard callback: epoch scalars and the learning rate, no graph, histograms
    or profiling (cheap: a few scalars an epoch)."""
    return EpochBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False, write_images=False,
                      update_freq="epoch", profile_batch=0)


def write_images(root: str | None, run_id: str, name: str, images: np.ndarray, step: int = 0) -> None:
    """float [0, 1] images (N, H, W, C) as one image summary (up to 16 shown)."""
    if not root or images is None or len(images) == 0:
        return
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    with tf.summary.create_file_writer(str(Path(root) / run_id / "images")).as_default():
        tf.summary.image(name, images, step=step, max_outputs=16)


def _plain(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return None if value is None else str(value)


def write_hparams(root: str | None, run_id: str, row: dict) -> None:
    """The run's HParams record: HPARAMS of `row` as hyperparameters, METRICS as scalars."""
    if not root:
        return
    from tensorboard.plugins.hparams import api as hparams_api  # 90 ms to import: only for --tensorboard runs

    params = {k: _plain(row[k]) for k in HPARAMS if k in row and _plain(row[k]) is not None}
    with tf.summary.create_file_writer(str(Path(root) / run_id)).as_default():
        hparams_api.hparams(params, trial_id=run_id)
        for k in METRICS:
            value = _plain(row.get(k))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(k, value, step=0)
