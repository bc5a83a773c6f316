"""`transfer select`: choose which images of an unlabeled pool to label, with an encoder's
features (or raw pixels, or a random encoder: the baselines), before any label exists.

Writes OUT (CSV `path,label`, in the order to label them; the label empty to fill in, or
the known one when the pool is labeled, for simulations), a contact sheet of the chosen
images beside it (OUT with .png, and a self-contained .html), and one results row. With
`--exclude LABELED.csv` (a `path` column) the images already labeled count as labeled:
the next round of an iterative labeling.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipelines.common import encoder_blocks, report_skipped
from transfer import (artifacts, backbones, budget, features, labelstudio, lists, models, outputs, results,
                      selection, splits, stream, training, visualize)
from transfer.config import SelectConfig
from transfer.errors import TransferError


def run(cfg: SelectConfig, log=print) -> dict:
    """Select, write the CSV and the contact sheet, append and return the row."""
    clock = results.Stopwatch()
    out = Path(cfg.out)
    _check_outputs(cfg, out)
    backbone = backbones.is_backbone(cfg.encoder)  # built once the pool's channels are known
    net, size, channels, objective, readout = budget.feature_model(
        "pixels" if cfg.encoder == "random" or backbone else cfg.encoder, cfg.readout, cfg.channels)
    size = size or cfg.image_size
    source, pool = splits.open_pool(cfg.data, cfg.labeled, size, channels or cfg.channels, log)
    if backbone:
        net, size, channels, objective, readout = budget.feature_model(cfg.encoder, cfg.readout, source.channels,
                                                                       cfg.weights, size)
    if cfg.encoder == "random":  # the baseline: a random encoder of the architecture options, this seed
        training.set_seed(cfg.seed)
        random = models.build_encoder((size, size, source.channels), encoder_blocks(cfg), cfg.arch)
        readout = "avg" if cfg.readout == "auto" else cfg.readout
        net, objective = models.build_features(random, readout, frozen=True), "random"
    excluded = _excluded(cfg, source, pool, log)
    what = "raw pixels" if net is None else f"{cfg.encoder} ({readout})"
    log(f"selecting {cfg.labels} of {len(pool)} images of {cfg.data} to label ({cfg.selection} on {what}"
        + (f"; {len(excluded)} already labeled" if len(excluded) else "") + ")")
    f, y, positions = features.compute(net, stream.ImageSet(source, pool, size))
    report_skipped(source.failed, log, "while decoding")
    if len(f) == 0:
        raise TransferError(f"{cfg.data}: no readable images to select from")
    labeled_rows = np.flatnonzero(np.isin(positions, excluded))
    probabilities = _probabilities(cfg.model, source, pool, positions, log) if cfg.model else None
    rows = selection.select(cfg.selection, f, cfg.labels, labeled_rows, cfg.seed, cfg.purity, probabilities)
    chosen, labels = positions[rows], y[rows]
    names = [source.name(i) for i in chosen]
    known = source.labels is not None
    _write_choice(cfg, out, source, names, labels, f"{cfg.selection} on {what}", log)
    if cfg.sheet:
        _contact_sheet(out, source, chosen, names, size, f"{cfg.selection} on {what}: {len(chosen)} images to label")
    row = results.row("select", cfg, encoder=cfg.encoder, objective=objective, readout=readout, strategy=cfg.selection,
                      purity=cfg.purity, budget=cfg.labels, n_selected=len(chosen), n_pool=len(f),
                      n_excluded=len(labeled_rows), feature_dim=f.shape[1],
                      labeled_classes=len(set(labels.tolist())) if known else None,
                      classes=len(source.class_names) if known else None, skipped_files=source.unreadable(),
                      **clock.read(), peak_memory_mb=round(training.peak_memory_mb(), 1), run_dir=str(out))
    results.append_row(cfg.results, row)
    log(f"{len(chosen)} images to label -> {out}" + (f" (covering {row['labeled_classes']} of "
                                                       f"{row['classes']} classes)" if known else ""))
    return row


def _check_outputs(cfg: SelectConfig, out: Path) -> None:
    """Every file select writes, checked before any work: the list (or Label Studio's task file and
    labeling config), the contact sheet and page, the results table."""
    sheet = {"contact sheet": out.with_suffix(".png"), "contact page": out.with_suffix(".html")} if cfg.sheet else {}
    studio = cfg.format == "label-studio"
    config_out = {"labeling config": out.with_suffix(".xml")} if studio else {}
    outputs.distinct({"--out": out, **config_out, **sheet, "--results": results.target(cfg.results)},
                     {"--data": cfg.data, "--exclude": cfg.exclude})
    outputs.check(out, "--out", labelstudio.TASKS if studio else outputs.LABEL_LIST, cfg.overwrite)
    for what, path in config_out.items():
        outputs.check(path, what, labelstudio.CONFIG, cfg.overwrite)
    for (what, path), kind in zip(sheet.items(), (outputs.PNG, outputs.HTML)):
        outputs.check(path, what, kind, cfg.overwrite)
    outputs.check(results.target(cfg.results), "--results")
    results.check_table(cfg.results)


def _write_choice(cfg: SelectConfig, out: Path, source, names: list[str], labels: np.ndarray, how: str, log) -> None:
    """The chosen images as a path,label list (the label known in a labeled pool, else empty), or
    as Label Studio's task file and labeling config."""
    known = source.labels is not None
    if cfg.format != "label-studio":
        lists.write_label_list(out, names, [source.class_names[c] if known and c >= 0 else "" for c in labels])
        return
    classes = list(cfg.classes) or (list(source.class_names) if known else [])
    if not classes:
        raise TransferError("--format label-studio needs the classes to choose from: --classes a,b,c (the pool "
                            "has no labels to take them from)")
    _, xml, where = labelstudio.write(out, names, classes, how)
    log(f"Label Studio: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={where.root}; in a project whose labeling interface is {xml}, "
        f"add a Local files source storage with the absolute path {where.storage} (no need to sync it), "
        f"then import {out}")


def _excluded(cfg: SelectConfig, source, pool: np.ndarray, log) -> np.ndarray:
    """Positions of the pool's images listed in --exclude (a CSV with a path column)."""
    if not cfg.exclude:
        return np.zeros(0, np.int64)
    if labelstudio.is_export(cfg.exclude):  # the labeled tasks of a Label Studio export
        paths, _, _ = labelstudio.read(cfg.exclude, "--exclude")
        listed = lists.Table(Path(cfg.exclude), ["path"], [{"path": str(p)} for p in paths])
    else:
        listed = lists.read(cfg.exclude, "--exclude")
    wanted = {os.path.realpath(listed.resolve(row["path"])) for row in listed.rows if row["path"]}
    names = {row["path"] for row in listed.rows}  # built-in and in-memory images by name (digits[12])
    found = np.array(sorted(i for i in pool if os.path.realpath(source.name(i)) in wanted
                            or source.name(i) in names and not os.path.exists(source.name(i))), dtype=np.int64)
    if len(found) < len(listed.rows):
        log(f"warning: {len(listed.rows) - len(found)} of the {len(listed.rows)} images in {cfg.exclude} are not in "
            "the pool (a relative path is read relative to the list's folder)")
    return found


def _probabilities(model_dir: str, source, pool: np.ndarray, positions: np.ndarray, log) -> np.ndarray:
    """The classifier's class probabilities for the pool images at `positions` (at its own image
    size; an image it cannot read gets uniform probabilities: the most uncertain)."""
    run = artifacts.open_run(model_dir, "classifier")
    if run.channels != source.channels:
        raise TransferError(f"--model {model_dir} takes {run.channels}-channel images; the pool's have "
                            f"{source.channels}")
    p, _, at = features.compute(run.model, stream.ImageSet(source, pool, run.image_size))
    where = {int(i): k for k, i in enumerate(at)}
    n = p.shape[1] if len(p) else 2
    out = np.array([p[where[int(i)]] if int(i) in where else np.full(n, 1.0 / n) for i in positions])
    log(f"the classifier of {model_dir}: median margin {np.median(selection.margins(out)):.3f} on the pool")
    return out


def _contact_sheet(out: Path, source, chosen: np.ndarray, names: list[str], size: int, title: str) -> None:
    """The chosen images in the order to label them (PNG, and an HTML page listing them)."""
    images, _ = stream.load_in_order(source, chosen, size)
    if images.shape[-1] not in (1, 3):
        images = images[..., :3]
    visualize.save_png(visualize.tile(list(images), columns=min(10, len(images))), out.with_suffix(".png"),
                       min_px=640)
    caption = "In the order to label them, left to right, top to bottom: " + ", ".join(
        f"{k + 1}. {n}" for k, n in enumerate(names))
    outputs.write_text(out.with_suffix(".html"), visualize.html_report(title, [("Images to label", caption,
                                                                                   out.with_suffix(".png"))]))
