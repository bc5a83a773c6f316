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


def save_preview(path: Path, originals: np.ndarray, reconstructions: np.ndarray, min_px: int = 64) -> None:
    """A PNG with originals in the top row and their reconstructions below."""
    from PIL import Image

    n, h, w, c = originals.shape
    scale = max(1, -(-min_px // h))
    grid = np.ones((2 * h + 2, n * (w + 2), c), dtype=np.float32)
    for i in range(n):
        x0 = i * (w + 2) + 1
        grid[:h, x0 : x0 + w] = originals[i]
        grid[h + 2 :, x0 : x0 + w] = reconstructions[i]
    grid = np.clip(grid * 255.0 + 0.5, 0, 255).astype(np.uint8)
    grid = np.kron(grid, np.ones((scale, scale, 1), dtype=np.uint8))
    Image.fromarray(grid[..., 0] if c == 1 else grid[..., :3]).save(path)


def record_failure(results_path: str, row: dict, error: Exception) -> None:
    """Append a `status=failed` row (no metrics: a failed run is not a result)."""
    results.append_row(results_path, {**row, "timestamp": results.now(), "status": "failed", "error": str(error)})
