"""Apply a fine-tuned classifier to new images; write one CSV row per image."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipelines.common import report_skipped
from transfer import artifacts, outputs, stopping, stream
from transfer.config import PredictConfig
from transfer.errors import TransferError
from transfer.progress import Progress


def run(cfg: PredictConfig, log=print) -> Path:
    out = Path(cfg.out)
    outputs.distinct({"--out": out}, {"--data": cfg.data})
    outputs.check(out, "--out", outputs.csv_with("path", "predicted"), cfg.overwrite)
    run = artifacts.open_run(cfg.model, "classifier")
    model, size, classes = run.model, run.image_size, run.class_names
    source = stream.open_for_prediction(cfg.data, size, run.channels)
    report_skipped(source.skipped, log)
    if model.output.shape[-1] != len(classes):
        raise TransferError(f"{cfg.model}: the model has {model.output.shape[-1]} outputs but the manifest "
                            f"names {len(classes)} classes")
    written = 0

    def write(tmp: Path) -> None:  # rows written batch by batch: bounded memory
        nonlocal written
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "predicted", *[f"prob_{c}" for c in classes]])
            batches = stream.records(source, np.arange(len(source)), size).batch(cfg.batch_size)
            progress = Progress(log, len(source), "predicted", unit="image")
            for positions, images, _ in batches.as_numpy_iterator():
                stopping.check()
                for i, p in zip(positions, np.asarray(model.predict_on_batch(images))):
                    writer.writerow([source.name(int(i)), classes[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])
                    written += 1
                progress.update(int(positions[-1]) + 1)
            progress.update(len(source))

    outputs.replace(out, write)
    report_skipped(source.failed, log, "while decoding")
    log(f"wrote {written} prediction(s) to {out}")
    return out
