"""Small steps the pipelines share."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path

import numpy as np

from transfer import data as data_lib
from transfer import architectures, results
from transfer.errors import TrainingDiverged, TransferError


def report_skipped(skipped: list[tuple[str, str]], log, when: str = "") -> None:
    """One line for the files skipped as unreadable (`skipped` holds (path, reason) pairs)."""
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s){' ' + when if when else ''}; first: {skipped[0][1]}")


def encoder_blocks(cfg) -> list[architectures.Block]:
    return architectures.preset_blocks(cfg.arch, cfg.filters, **cfg.overrides())


def config_dict(cfg) -> dict:
    """The run's configuration as saved in config.json (and matched to resume a run)."""
    d = {"command": type(cfg).__name__, **dataclasses.asdict(cfg)}
    d.pop("overwrite", None)
    return d


HOLDOUT_FRACTION = 0.1
HOLDOUT_MAX = 1024  # held-out images are kept in memory for metrics and previews


def holdout_split(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) split of unlabeled images by content id: 10%, at most 1,024."""
    if len(ids) < 2:
        raise TransferError(f"pretraining needs at least 2 images. Received: {len(ids)}")
    fraction = min(HOLDOUT_FRACTION, HOLDOUT_MAX / len(ids))
    return data_lib.split_test(np.zeros(len(ids), dtype=np.int64), ids, fraction)


def save_preview(path: Path, originals: np.ndarray, reconstructions: np.ndarray) -> None:
    """A PNG with originals in the top row and their reconstructions (or views, samples) below."""
    from transfer import visualize

    tiles = [img if img.shape[-1] in (1, 3) else img[..., :3] for img in [*originals, *reconstructions]]
    visualize.save_png(visualize.tile(tiles, columns=len(originals)), path, min_px=512)


@contextlib.contextmanager
def staged_run(staging: Path, chief: bool, results_path: str, failure_row):
    """What a run does when it fails inside its staging directory: divergence is recorded as a
    `status=failed` row (`failure_row()` gives its fields) and the staging is removed; bad input
    removes the staging (nothing worth resuming); a lost worker removes only a non-chief's scratch
    directory (the chief's staging is kept, as after a kill)."""
    from transfer import distribute

    try:
        yield
    except TrainingDiverged as exc:
        shutil.rmtree(staging, ignore_errors=True)
        record_failure(results_path, failure_row(), exc)
        raise
    except TransferError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except distribute.WorkerFailed:
        if not chief:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def record_failure(results_path: str, row: dict, error: Exception) -> None:
    """Append a `status=failed` row (no metrics: a failed run is not a result)."""
    results.append_row(results_path, {**row, "timestamp": results.now(), "status": "failed", "error": str(error)})
