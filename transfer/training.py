"""Compile/fit helpers and callbacks shared by the pipelines."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import h5py  # Keras's own format for weights (a Keras dependency)
import keras
import numpy as np
import tensorflow as tf

from transfer import board, distribute, internals, stopping, stream
from transfer.progress import Progress
from transfer.errors import TrainingDiverged, TransferError


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend, so a run is repeatable."""
    keras.utils.set_random_seed(int(seed))


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


BACKUP_SECONDS = float(os.environ.get("TRANSFER_BACKUP_SECONDS", "10"))


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that survives a kill during its own write, works across workers,
    and costs little on short epochs.

    One worker backs up at the end of an epoch once `interval` seconds have passed since
    its last backup (a kill loses at most that much training plus one epoch): writing the
    weights and optimizer state costs more than a whole epoch of a few labeled images
    (75 ms against ~25 ms for a small encoder, so backing up every epoch tripled a
    fine-tune's time). Several workers back up after every epoch, so that all take the
    same decision (saving may be a collective).

    With `double_checkpoint`, a torn latest backup falls back to the one
    before; if no usable backup is left (killed while writing the first), the
    fit starts over instead of failing.

    Several workers: every one restores from `backup_dir` (the chief's, on a file
    system they all reach) and checks that all restored the same epoch; every one
    saves after each epoch (reading synchronized variables may be a collective), but
    only the chief into `backup_dir`, the others into `write_dir`.
    """

    def __init__(self, backup_dir, write_dir=None, log=None, interval: float | None = None, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.write_dir, self.log = write_dir, log
        self.interval = BACKUP_SECONDS if interval is None else interval
        self.every_epoch = distribute.is_multiworker(distribute.current())  # all workers decide alike
        self._saved_at = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if self.every_epoch or time.monotonic() - self._saved_at >= self.interval:
            with stopping.critical():  # a stop signal waits: an interrupted write leaves a valid but partial file
                internals.save_backup(self, epoch + 1)
            self._saved_at = time.monotonic()

    def _repair(self) -> None:
        """Chief only, before anyone loads: a torn latest backup is replaced by the previous
        one (as Keras would), an unusable backup removed, so that the workers then only read."""
        weights, metadata, prev_weights, prev_metadata = internals.backup_files(self)
        try:
            _check_backup(weights, metadata)
        except (OSError, ValueError):
            try:
                _check_backup(prev_weights, prev_metadata)
                shutil.copy(prev_weights, weights)
                if os.path.exists(prev_metadata):
                    shutil.copy(prev_metadata, metadata)
            except (OSError, ValueError) as exc:
                if self.log is not None:
                    self.log(f"the backup in {self.backup_dir} cannot be read ({exc}); starting over")
                shutil.rmtree(self.backup_dir, ignore_errors=True)

    def on_train_begin(self, logs=None):
        # Only the chief repairs the backup; every worker then reads it (loading is a collective
        # under a multiworker strategy, so all load together), never while the chief writes it.
        if self.write_dir is None:
            self._repair()
        distribute.barrier(f"{self.backup_dir}:repaired")
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError) as exc:  # unreadable or incomplete after all (e.g. no shared file system)
            if self.log is not None:
                self.log(f"the backup in {self.backup_dir} cannot be read ({exc}); starting over")
            internals.forget_restored(self)
        self._saved_at = time.monotonic()
        restored = internals.restored_epoch(self.model)
        if restored and self.log is not None:
            self.log(f"continuing after epoch {restored} from the backup in {self.backup_dir}")
        try:
            distribute.same_on_every_worker(f"{self.backup_dir}:epoch", str(restored))
        except TransferError as exc:
            raise TransferError(f"{exc}; resuming a run of several workers needs the chief's run directory "
                                "on a file system every worker reaches") from None
        if self.write_dir is not None:
            internals.write_backups_to(self, self.write_dir)


def _check_backup(weights, metadata) -> None:
    """Raise OSError or ValueError unless the backup's weights (HDF5) and metadata (JSON) that
    exist are readable (a kill mid-write leaves either torn)."""
    if os.path.exists(weights):
        h5py.File(weights, "r").close()
    if os.path.exists(metadata):
        with open(metadata) as f:
            json.load(f)


class StopAtSignal(keras.callbacks.Callback):
    """Where a stop signal (SIGINT, SIGTERM, SIGHUP) held during `fit` takes effect: after a step."""

    def on_train_batch_end(self, batch, logs=None):
        stopping.check()

    def on_test_batch_end(self, batch, logs=None):
        stopping.check()

    def on_epoch_end(self, epoch, logs=None):
        stopping.check()


class EpochSeconds(keras.callbacks.Callback):
    """Adds each epoch's wall time (its training steps, before the callbacks after this one)
    to its logs, hence to its history row as `seconds`."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = round(time.perf_counter() - self._start, 3)


class EpochLog(keras.callbacks.Callback):
    """Epochs, their metrics and the ETA through `log` (see `transfer.progress`: a bar on a
    terminal, else a line every `every` epochs and at the last)."""

    def __init__(self, log: Callable[[str], None], epochs: int, prefix: str = "", every: int | None = None):
        super().__init__()
        self.log, self.epochs, self.prefix, self.every = log, epochs, prefix, every
        self._progress = None

    def on_train_begin(self, logs=None):
        self._progress = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._progress is None:  # a resumed fit starts after epoch 0: the ETA counts from here
            self._progress = Progress(self.log, self.epochs, f"{self.prefix}epoch", start=epoch, every=self.every,
                                      unit="epoch")

    def on_epoch_end(self, epoch, logs=None):
        self._progress.update(epoch + 1, {k: v for k, v in (logs or {}).items() if k not in ("learning_rate", "seconds")})


class Arrays(NamedTuple):
    """Images (or features) and labels in memory, drawn in batches of `batch_size`, reshuffled every epoch."""

    x: np.ndarray
    y: np.ndarray | None
    batch_size: int


class Batches(NamedTuple):
    """A dataset of batches and how many of them make an epoch (`stream.ImageSet.train_batches`)."""

    dataset: object
    steps: int


@dataclass(frozen=True)
class Keep:
    """What a fit keeps and shows beside the training itself: its epochs in a CSV `history`,
    `backups` to resume from, progress lines through `log` (each starting with `prefix`), a
    TensorBoard folder; `xla` compiles its step. A run makes one for each phase (`Run.keep`)."""

    history: Path | None = None
    backups: Path | None = None
    log: Callable[[str], None] | None = None
    prefix: str = ""
    tensorboard: str | None = None
    xla: bool = False


def fit(model: keras.Model, data: Arrays | Batches, epochs: int, keep: Keep = Keep(), callbacks=(),
        validation_data=None):
    """model.fit with a CSV history and progress lines; returns the History.

    With `keep.backups`, training state is saved at the end of an epoch once BACKUP_SECONDS
    have passed since the last save (after every epoch with several workers), and a fit
    started again (after a crash or kill) continues from the last saved epoch; the history
    then holds every epoch once. With several workers, `keep.backups` is the chief's (see
    `SafeBackupAndRestore`). `callbacks` run before the kept ones.
    """
    if isinstance(data, Arrays):
        x, y, batch_size, steps_per_epoch = data.x, data.y, data.batch_size, None
    else:
        x, y, batch_size, steps_per_epoch = data.dataset, None, None, data.steps
    strategy = distribute.current()
    if keep.xla:
        model.jit_compile = True  # XLA for the train step (set before the first fit builds it)
    write_dir = None
    if distribute.is_multiworker(strategy):
        distribute.prepare_model(model, distribute.local_batch(x, y))
        if keep.backups is not None and not distribute.cluster()["chief"]:
            write_dir = tempfile.mkdtemp(prefix="transfer-backup-")  # only the chief writes the backups
    # The caller's callbacks first: what they add to an epoch's logs (the online probe) is in its
    # history row; the epoch's seconds before them, so that they do not count the probe.
    callbacks = [StopAtSignal(), keras.callbacks.TerminateOnNaN(), EpochSeconds(), *callbacks]
    if keep.tensorboard is not None:  # the chief's (runs give None on other workers)
        callbacks.append(board.callback(keep.tensorboard))
    if keep.history is not None:
        callbacks.append(keras.callbacks.CSVLogger(str(keep.history), append=True))
    if keep.backups is not None:
        # After the CSVLogger: a kill between the two repeats an epoch's row (dropped below), never loses one.
        callbacks.append(SafeBackupAndRestore(str(keep.backups), write_dir, keep.log, delete_checkpoint=True,
                                              double_checkpoint=True))
    if keep.log is not None:
        callbacks.append(EpochLog(keep.log, epochs, keep.prefix))
    if isinstance(x, np.ndarray) and not distribute.is_multiworker(strategy):
        # One iterator over all epochs: given arrays, Keras builds a new one every epoch, which costs
        # more than an epoch of a few labeled images (fine-tuning on 50 images: 5.0 s of fit, 2.6 s
        # with one). Drawn as the training images of every objective are (`stream.ImageSet.train_batches`):
        # reshuffled passes cut into full batches, so the step is traced once.
        x, steps_per_epoch = stream.ImageSet.of_arrays(x, y).train_batches(batch_size, None, with_labels=y is not None)
        y = batch_size = None
    if type(model).train_step is keras.Model.train_step and hasattr(x, "element_spec"):  # custom steps build their own
        build_for(model, x)
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=batch_size is not None, verbose=0,
                        callbacks=callbacks, validation_data=validation_data, steps_per_epoch=steps_per_epoch)
    stopping.check()
    if keep.history is not None:
        dedupe_history(keep.history)
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"training diverged: the loss became {losses[-1]} in epoch {len(losses)}; "
            "try a lower --learning-rate"
        )
    return history


def build_for(model: keras.Model, data) -> None:
    """Build a compiled model's state (metrics, loss, optimizer) for `data` (a dataset of batches,
    or a batch of arrays) before `fit` or `evaluate` traces its step: made inside the first trace,
    it makes TensorFlow trace the step a second time. Under a strategy Keras does it itself."""
    if not tf.distribute.has_strategy():
        internals.build_before_fit(model, _blank_batch(data) if hasattr(data, "element_spec") else data)


def recalibrate_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int, seed: int = 0) -> None:
    """Set BatchNorm moving statistics to their average over one shuffled pass of x.

    Few-label training takes too few steps for the moving averages to reach
    the statistics the trained weights produce; evaluating with stale
    statistics is the classic cause of a from-scratch CNN "collapsing" at test
    time. The pass runs in training mode with no weight updates; batch k
    enters with momentum (k-1)/k, so the result is the plain mean over all
    batches. Shuffling matters: class-sorted batches would skew it.
    """
    bns = [l for l in _all_layers(model) if isinstance(l, keras.layers.BatchNormalization) and l.trainable]
    if not bns:
        return
    saved = [b.momentum for b in bns]
    order = np.random.default_rng(seed).permutation(len(x))
    try:
        for k, start in enumerate(range(0, len(x), batch_size), start=1):
            for b in bns:
                b.momentum = (k - 1) / k
            model(x[order[start : start + batch_size]], training=True)
    finally:
        for b, m in zip(bns, saved):
            b.momentum = m


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def snapshot_weights(model: keras.Model) -> list[np.ndarray]:
    """A copy of every variable (trainable or not, BatchNorm statistics included)."""
    return [np.array(v) for v in model.weights]


def weights_identical(model: keras.Model, snapshot: list[np.ndarray]) -> bool:
    current = model.weights
    return len(current) == len(snapshot) and all(
        np.array_equal(np.array(v), s) for v, s in zip(current, snapshot)
    )


def dedupe_history(path) -> None:
    """Keep the last row of each epoch in a CSVLogger file (a resumed fit repeats at most one)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or rows[0][:1] != ["epoch"]:
        return
    last = {}
    for row in rows[1:]:
        if row:
            last[row[0]] = row
    ordered = sorted(last.values(), key=lambda r: int(r[0]))
    if len(ordered) == len(rows) - 1:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(rows[0])
        writer.writerows(ordered)
    os.replace(tmp, path)


def _blank_batch(ds) -> object:
    """Zeros shaped like a batch of the dataset `ds` (an unknown batch size: 2)."""
    return tf.nest.map_structure(
        lambda spec: np.zeros([2 if d is None else d for d in spec.shape], spec.dtype.as_numpy_dtype), ds.element_spec)
