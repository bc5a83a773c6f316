"""Small steps the pipelines share."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from transfer import data as data_lib
from transfer import architectures, results
from transfer.errors import TransferError


def report_skipped(dataset: data_lib.ImageSet, log) -> None:
    if dataset.skipped:
        _, reason = dataset.skipped[0]
        log(f"skipped {len(dataset.skipped)} unreadable file(s); first: {reason}")


def encoder_blocks(cfg) -> list[architectures.Block]:
    return architectures.preset_blocks(cfg.arch, cfg.filters, **cfg.overrides())


def config_dict(cfg) -> dict:
    """The run's configuration as saved in config.json (and matched to resume a run)."""
    d = {"command": type(cfg).__name__, **dataclasses.asdict(cfg)}
    d.pop("overwrite", None)
    return d


def holdout_split(ids: np.ndarray, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) split of unlabeled images by content id."""
    if len(ids) < 2:
        raise TransferError(f"pretraining needs at least 2 images. Received: {len(ids)}")
    return data_lib.split_test(np.zeros(len(ids), dtype=np.int64), ids, fraction)


def save_preview(path: Path, originals: np.ndarray, reconstructions: np.ndarray) -> None:
    """A PNG with originals in the top row and their reconstructions (or views, samples) below."""
    from transfer import visualize

    tiles = [img if img.shape[-1] in (1, 3) else img[..., :3] for img in [*originals, *reconstructions]]
    visualize.save_png(visualize.tile(tiles, columns=len(originals)), path, min_px=512)


def record_failure(results_path: str, row: dict, error: Exception) -> None:
    """Append a `status=failed` row (no metrics: a failed run is not a result)."""
    results.append_row(results_path, {**row, "timestamp": results.now(), "status": "failed", "error": str(error)})
