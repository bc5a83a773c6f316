"""Apply a fine-tuned classifier to new images; write one CSV row per image."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

import numpy as np

from pipelines.common import report_skipped
from transfer import artifacts, data
from transfer.config import PredictConfig
from transfer.errors import TransferError


def run(cfg: PredictConfig, log=print) -> Path:
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise TransferError(f"{out} already exists; pass --overwrite to replace it")
    model, manifest = artifacts.load_model_run(cfg.model, "classifier")
    pre = manifest["preprocessing"]
    images = data.load_images_for_prediction(cfg.data, int(pre["image_size"]), int(pre["channels"]))
    report_skipped(images.skipped, log)
    probs = model.predict(images.images, batch_size=cfg.batch_size, verbose=0)
    classes = manifest["class_names"]
    if probs.shape[1] != len(classes):
        raise TransferError(f"{cfg.model}: the model has {probs.shape[1]} outputs but the manifest names {len(classes)} classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "predicted", *[f"prob_{c}" for c in classes]])
        for name, p in zip(images.names, probs):
            writer.writerow([name, classes[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])
    os.replace(tmp, out)
    log(f"wrote {len(images)} prediction(s) to {out}")
    return out
