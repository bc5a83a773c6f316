"""Unsupervised pretraining objectives.

Each objective is a module exposing `NAME` and

    train(encoder, blocks, train, val_images, *, epochs, batch_size,
          learning_rate, history_path, log, backup_dir=None, seed=0) -> ObjectiveResult

which trains `encoder` in place (resuming from `backup_dir` when it holds a
backup of an interrupted fit). `train` is a `TrainImages`: held in memory or
streamed from files, the objective sees only batches; `val_images` is a
small in-memory array of held-out images for metrics and previews. New objectives (denoising, masked,
contrastive, adversarial) slot in beside `autoencoder` by registering here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from transfer.errors import TransferError


@dataclass
class ObjectiveResult:
    """What an objective reports: metrics for the manifest and the results row."""

    metrics: dict
    preview: np.ndarray | None = None  # images shown under val_images[:n], e.g. reconstructions
    preview_name: str = "reconstructions.png"
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainImages:
    """Training images as an objective sees them: held in memory or streamed from files.

    Attributes:
        count: images in one epoch (over all workers).
        shape: (height, width, channels).
        make: make(batch_size, shuffle, seed, shard) -> a `tf.data.Dataset` of float32
            image batches; `shard` is (num_shards, index) or None.
    """

    count: int
    shape: tuple[int, int, int]
    make: Callable

    def batches(self, batch_size: int, shuffle: bool, seed: int = 0, transform=None):
        """Batches for `fit` under the current tf.distribute strategy (see `transfer.distribute`)."""
        from transfer import distribute

        return distribute.batches(lambda b, shard: self.make(b, shuffle, seed, shard), batch_size, self.count,
                                  transform)

    def sample(self, n: int) -> np.ndarray:
        """Up to n images, in order (for statistics such as the mean image)."""
        out, have = [], 0
        for batch in self.make(min(n, 256), False, 0, None).as_numpy_iterator():
            out.append(batch[: n - have])
            have += len(out[-1])
            if have >= n:
                break
        return np.concatenate(out) if out else np.zeros((0, *self.shape), np.float32)


def in_memory(images: np.ndarray) -> TrainImages:
    """TrainImages over an array held in memory (validation images, tests): the same
    batching as built-in data (`transfer.stream`)."""
    from transfer import stream

    listing = stream.Listing(src="memory", paths=[], ids=np.arange(len(images)).astype(str),
                             channels=int(images.shape[-1]), images=images)
    return stream.train_images(listing, np.arange(len(images)), int(images.shape[1]))


def get(name: str):
    from transfer.objectives import autoencoder, contrastive, denoising, gan, masked

    registry = {m.NAME: m for m in (autoencoder, contrastive, denoising, gan, masked)}
    if name not in registry:
        raise TransferError(f"unknown objective '{name}'. Available: {sorted(registry)}")
    return registry[name]


NAMES = ("contrastive", "autoencoder", "denoising", "masked", "gan")
