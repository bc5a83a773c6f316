"""What every objective shares: its options in, its report out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Options:
    """What an objective is built with (the run's bookkeeping stays with the pipeline).

    Attributes:
        learning_rate: the optimizer's learning rate.
        batch_size: images per step (contrastive: also the negatives per image).
        seed: seed of the objective's own randomness (noise, fixed sample grids).
        steps: training steps of the whole run (for learning-rate schedules; 0: unknown).
        temperature, projector, crop, blur, jitter: the two-view objectives' (contrastive, vicreg, byol)
            softmax temperature (contrastive only), projector widths, smallest crop side, view blur
            and brightness/contrast jitter strength;
            None: the objective's own (see `transfer.objectives.contrastive`).
    """

    learning_rate: float
    batch_size: int
    seed: int = 0
    steps: int = 0
    temperature: float | None = None
    projector: tuple[int, ...] | None = None
    crop: float | None = None
    blur: float | None = None
    jitter: float | None = None


@dataclass
class Report:
    """What an objective reports after training: metrics for the manifest and the results row."""

    metrics: dict
    preview: np.ndarray | None = None  # images shown under val_images[:n], e.g. reconstructions
    preview_name: str = "reconstructions.png"
    warnings: list[str] = field(default_factory=list)
