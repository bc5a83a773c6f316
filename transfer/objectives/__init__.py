"""Unsupervised pretraining objectives, shaped the keras-io way.

Each objective is a module exposing

    NAME            its name (`OBJECTIVES` lists them, in the CLI's order)
    LEARNING_RATE   its default learning rate
    VALIDATES       whether its model has a `test_step` (held-out loss per epoch)
    TWO_VIEW        (optional) True if it learns from two views of each image (`--crop`, `--projector`...)
    build(encoder, blocks, shape, options) -> keras.Model
                    a compiled model whose `train_step` takes batches of images and
                    trains `encoder` in place (`options`: `base.Options`)
    callbacks(model, run_dir) -> list of extra Keras callbacks (e.g. sample grids)
    report(model, train, val_images) -> base.Report
                    metrics, a preview and warnings, once training is over

The pipeline (`pipelines/pretrain.py`) fits the model once with `training.fit`.
"""

from __future__ import annotations

from transfer.errors import TransferError
from transfer.objectives import autoencoder, byol, contrastive, denoising, gan, masked, vicreg
from transfer.objectives.base import Options, Report

_REGISTRY = {m.NAME: m for m in (contrastive, autoencoder, denoising, masked, gan, vicreg, byol)}
OBJECTIVES = tuple(_REGISTRY)
# The objectives that learn from two random views of each image (their views and projector can be tuned).
TWO_VIEW = tuple(name for name, m in _REGISTRY.items() if getattr(m, "TWO_VIEW", False))


def get(name: str):
    if name not in _REGISTRY:
        raise TransferError(f"unknown objective '{name}'. Available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


__all__ = ["OBJECTIVES", "TWO_VIEW", "Options", "Report", "get"]
