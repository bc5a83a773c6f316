"""Unsupervised pretraining objectives.

Each objective is a module exposing `NAME` and

    train(encoder, blocks, train_images, val_images, *, epochs, batch_size,
          learning_rate, history_path, log, backup_dir=None, seed=0) -> ObjectiveResult

which trains `encoder` in place (resuming from `backup_dir` when it holds a
backup of an interrupted fit). New objectives (denoising, masked,
contrastive, adversarial) slot in beside `autoencoder` by registering here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transfer.errors import TransferError


@dataclass
class ObjectiveResult:
    """What an objective reports: metrics for the manifest and the results row."""

    metrics: dict
    preview: np.ndarray | None = None  # images shown under val_images[:n], e.g. reconstructions
    preview_name: str = "reconstructions.png"
    warnings: list[str] = field(default_factory=list)


def get(name: str):
    from transfer.objectives import autoencoder, contrastive, denoising, gan, masked

    registry = {m.NAME: m for m in (autoencoder, contrastive, denoising, gan, masked)}
    if name not in registry:
        raise TransferError(f"unknown objective '{name}'. Available: {sorted(registry)}")
    return registry[name]


NAMES = ("contrastive", "autoencoder", "denoising", "masked", "gan")
