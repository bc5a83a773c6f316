"""`transfer select`: choose which images of an unlabeled pool to label, with an encoder's
features (or raw pixels, or a random encoder: the baselines), before any label exists.

Writes OUT (CSV `path,label`, in the order to label them; the label empty to fill in, or
the known one when the pool is labeled, for simulations), a contact sheet of the chosen
images beside it (OUT with .png, and a self-contained .html), and one results row. With
`--exclude LABELED.csv` (a `path` column) the images already labeled count as labeled:
the next round of an iterative labeling.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.common import encoder_blocks, report_skipped
from transfer import (artifacts, builtins, features, models, results, selection, splits, stream, training,
                      visualize)
from transfer.config import DEFAULT_TEST_FRACTION, SelectConfig
from transfer.errors import TransferError


def run(cfg: SelectConfig, log=print) -> dict:
    """Select, write the CSV and the contact sheet, append and return the row."""
    start = time.perf_counter()
    out = Path(cfg.out)
    for path, what in ((out, "--out"), (out.with_suffix(".png"), "contact sheet"), (results.target(cfg.results),
                                                                                     "--results")):
        artifacts.check_writable(path, what)
    results.check_table(cfg.results)
    encoder, size, channels = _encoder(cfg)
    source, pool = _pool(cfg, size, channels, log)
    net, objective = _features_model(cfg, encoder, size, source.channels)
    excluded = _excluded(cfg, source, pool, log)
    what = "raw pixels" if net is None else f"{cfg.encoder} ({cfg.readout})"
    log(f"selecting {cfg.budget} of {len(pool)} images of {cfg.data} to label ({cfg.strategy} on {what}"
        + (f"; {len(excluded)} already labeled" if len(excluded) else "") + ")")
    f, y, positions = features.compute(net, source, pool, size)
    report_skipped(source.failed, log, "while decoding")
    if len(f) == 0:
        raise TransferError(f"{cfg.data}: no readable images to select from")
    labeled_rows = np.flatnonzero(np.isin(positions, excluded))
    rows = selection.select(cfg.strategy, f, cfg.budget, labeled_rows, cfg.seed)
    chosen, labels = positions[rows], y[rows]
    names = [source.name(i) for i in chosen]
    known = source.labels is not None
    _write_csv(out, names, [source.class_names[c] if known and c >= 0 else "" for c in labels])
    if cfg.sheet:
        _contact_sheet(out, source, chosen, names, size, f"{cfg.strategy} on {what}: {len(chosen)} images to label")
    row = {"run_id": results.new_run_id("select"), "timestamp": results.now(), "command": "select", "status": "ok",
           "experiment": cfg.experiment, "data": cfg.data, "encoder": cfg.encoder, "objective": objective,
           "readout": None if net is None else cfg.readout, "strategy": cfg.strategy, "budget": cfg.budget,
           "n_selected": len(chosen), "n_pool": len(f), "n_excluded": len(labeled_rows), "seed": cfg.seed,
           "feature_dim": f.shape[1], "labeled_classes": len(set(labels.tolist())) if known else None,
           "classes": len(source.class_names) if known else None, "skipped_files": len(source.skipped)
           + len(source.failed), "seconds": round(time.perf_counter() - start, 2),
           "peak_memory_mb": round(training.peak_memory_mb(), 1), "run_dir": str(out)}
    results.append_row(cfg.results, row)
    log(f"{len(chosen)} images to label -> {out}" + (f" (covering {row['labeled_classes']} of "
                                                       f"{row['classes']} classes)" if known else ""))
    return row


def _encoder(cfg: SelectConfig):
    """(the pretrained encoder and its manifest, or None; image size; channels or None)."""
    if cfg.encoder in ("pixels", "random"):
        return None, cfg.image_size, cfg.channels
    encoder, manifest = artifacts.load_model_run(cfg.encoder, "encoder")
    pre = manifest["preprocessing"]
    if cfg.channels is not None and cfg.channels != int(pre["channels"]):
        raise TransferError(f"the encoder takes {pre['channels']}-channel images; --channels {cfg.channels} "
                            "cannot serve it")
    return (encoder, manifest), int(pre["image_size"]), int(pre["channels"])


def _features_model(cfg: SelectConfig, encoder, size: int, channels: int):
    """(the feature model, None for raw pixels; the objective or baseline name)."""
    if cfg.encoder == "pixels":
        return None, "pixels"
    if encoder is None:  # random: the architecture options, this seed
        training.set_seed(cfg.seed)
        random = models.build_encoder((size, size, channels), encoder_blocks(cfg), cfg.arch)
        return models.build_features(random, cfg.readout, frozen=True), "random"
    model, manifest = encoder
    return models.build_features(model, cfg.readout, frozen=True), manifest["objective"]


def _pool(cfg: SelectConfig, size: int, channels: int | None, log):
    """(source, positions to select from): a labeled source (built-ins always) without its
    test split, as fine-tune splits it; otherwise every image of the source."""
    if cfg.labeled or builtins.is_builtin(cfg.data):
        found = splits.open_labeled(cfg.data, None, DEFAULT_TEST_FRACTION, size, channels, log)
        return found.source, found.pool
    source = stream.open_source(cfg.data, False, size, channels)
    report_skipped(source.skipped, log)
    return source, np.arange(len(source))


def _excluded(cfg: SelectConfig, source, pool: np.ndarray, log) -> np.ndarray:
    """Positions of the pool's images listed in --exclude (a CSV with a path column)."""
    if not cfg.exclude:
        return np.zeros(0, np.int64)
    try:
        listed = pd.read_csv(cfg.exclude, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise TransferError(f"--exclude {cfg.exclude}: cannot be read as a CSV ({exc})") from None
    if "path" not in listed.columns:
        raise TransferError(f"--exclude {cfg.exclude}: needs a path column. Columns: {list(listed.columns)}")
    wanted = set(listed["path"]) | {str(Path(p).resolve()) for p in listed["path"] if p and "[" not in p}
    names = {source.name(i): i for i in pool}
    found = np.array(sorted(i for name, i in names.items() if name in wanted or str(Path(name).resolve()) in wanted
                            and "[" not in name), dtype=np.int64)
    if len(found) < len(listed):
        log(f"warning: {len(listed) - len(found)} of the {len(listed)} images in {cfg.exclude} are not in the pool")
    return found


def _write_csv(out: Path, names: list[str], labels: list[str]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows(zip(names, labels))
    artifacts.write_text(out, text.getvalue())


def _contact_sheet(out: Path, source, chosen: np.ndarray, names: list[str], size: int, title: str) -> None:
    """The chosen images in the order to label them (PNG, and an HTML page listing them)."""
    loaded = stream.load(source, chosen, size)  # decoded in position order
    row = {name: k for k, name in enumerate(loaded.paths)}
    images = np.stack([loaded.images[row[n]] for n in names if n in row])
    if images.shape[-1] not in (1, 3):
        images = images[..., :3]
    visualize.save_png(visualize.tile(list(images), columns=min(10, len(images))), out.with_suffix(".png"),
                       min_px=640)
    caption = "In the order to label them, left to right, top to bottom: " + ", ".join(
        f"{k + 1}. {n}" for k, n in enumerate(names))
    artifacts.write_text(out.with_suffix(".html"), visualize.html_report(title, [("Images to label", caption,
                                                                                   out.with_suffix(".png"))]))
