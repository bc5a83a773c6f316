"""Pretrain an encoder on unlabeled images and save it as a run directory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from pipelines.common import Run, encoder_blocks, holdout_split, report_skipped, save_preview
from transfer import artifacts, backbones, board, data, kmeans, models, objectives, probe, stream, training, visualize
from transfer.config import DEFAULT_TEST_FRACTION, PretrainConfig
from transfer.errors import TransferError
from transfer.vocabulary import KMEANS

PROBE_IMAGES = 1000  # labeled images the online probe watches, at most
PROJECTOR_FILE = "projector.keras"  # the two-view objectives' projection head, beside encoder.keras
DEFAULT_EPOCHS = 300  # passes over the pretraining images, unless that would train on more than
DEFAULT_IMAGES = 500_000  # images in all (about 8 minutes at 28x28 on 2 cores with the small encoder)


def run(cfg: PretrainConfig, log=print) -> dict:
    """Train, save `cfg.out` (encoder.keras, manifest.json, history.csv, config.json,
    pretrain_ids.npy, the objective's preview PNG and the visualize/ report), append a
    row to the results table. Returns the row ({} on a non-chief worker)."""
    objective = objectives.get(cfg.objective)
    blocks = None if cfg.init else encoder_blocks(cfg)  # refuse a bad size before loading data
    arch = backbones.name_of(cfg.init) if cfg.init else cfg.arch
    learning_rate = cfg.learning_rate or objective.LEARNING_RATE
    with Run("pretrain", cfg, cfg.out, log) as run:
        run.note(objective=_trained(cfg), method=_trained(cfg), arch=arch, epochs=cfg.epochs, start=cfg.starts_from(),
                 learning_rate=learning_rate, weights=backbones.origin(cfg.weights))
        source = stream.open_source(cfg.data, False, cfg.image_size, cfg.channels)
        report_skipped(source.skipped, log)
        train_idx, val_idx = holdout_split(source.ids)
        cfg = _resolve_epochs(cfg, len(train_idx), run)
        val_images = stream.load(source, val_idx, cfg.image_size).images
        train = _train_images(cfg, source, train_idx, run)
        log(f"pretraining {_trained(cfg)} on {len(train_idx)} images ({train.listing.store.held}; {len(val_idx)} "
            f"held out), {'x'.join(map(str, train.shape))}, arch {_described(cfg, arch)}, "
            f"{run.strategy.num_replicas_in_sync} replica(s)")
        with run.distributed():
            training.set_seed(cfg.seed)
            encoder, blocks = _encoder(cfg, train.shape, blocks)
            watch = _online_probe(cfg, encoder, source.channels, log)  # before --start: its start is the random one
            fit_start = time.perf_counter()
            _start(cfg, encoder, train, log)
            model, trained = _fit(cfg, objective, encoder, blocks, train, val_images, learning_rate, run, watch)
            fit_seconds = time.perf_counter() - fit_start
            report = _report(objective, model, train, val_images, watch)
        _log_problems(source, report, log)
        if run.worker_done(""):
            return {}
        projector = _write_extras(cfg, run, encoder, model, source, val_images, report)
        out = run.save(encoder, "encoder", cfg.image_size, source.channels, objective=_trained(cfg),
                       start=cfg.starts_from(), projector=projector, **_architecture(cfg, arch, blocks, source.channels),
                       metrics=report.metrics, data={"source": cfg.data, "images": len(source),
                                                     "fingerprint": source.fingerprint(), "skipped": source.unreadable()})
    row = run.record(**_row_fields(cfg, report.metrics, source, len(train_idx), trained, fit_seconds))
    _log_metrics(report.metrics, out, log)
    if watch is not None:
        log(probe.verdict(watch, f"{cfg.init}, {backbones.origin(cfg.weights)} weights" if cfg.init
                          else "random weights"))
    return row


def _trained(cfg: PretrainConfig) -> str:
    """What made the encoder, as the manifest and the row name it: the objective, or "kmeans"
    when no objective trains (--start kmeans --epochs 0)."""
    return KMEANS if cfg.epochs == 0 else cfg.objective


def _start(cfg: PretrainConfig, encoder, train: stream.ImageSet, log) -> None:
    """The kmeans start (--start, or the two-view objectives' default): every conv layer's filters
    from k-means on patches of up to kmeans.IMAGES training images drawn by the seed (the same
    on every worker)."""
    if cfg.starts_from() == KMEANS:
        kmeans.start(encoder, kmeans.sample(train, cfg.seed), cfg.seed, log)


def _fit(cfg: PretrainConfig, objective, encoder, blocks, train: stream.ImageSet, val_images, learning_rate: float,
         run: Run, watch):
    """(the objective's model, images trained on in this process) after cfg.epochs epochs; (None, 0)
    with --epochs 0, the encoder then as --start left it."""
    if cfg.epochs == 0:
        return None, 0
    batch = min(cfg.batch_size, len(train))
    options = _options(cfg, learning_rate, batch, cfg.epochs * -(-len(train) // batch))
    model = objective.build(encoder, blocks, train.shape, options)
    batches, steps = train.train_batches(options.batch_size, cfg.seed)
    history = training.fit(model, training.Batches(batches, steps), cfg.epochs, run.keep("pretrain"),
                           callbacks=[*objective.callbacks(model, run.staging), *([watch] if watch else [])],
                           validation_data=stream.ImageSet.of_arrays(val_images).eval_batches(options.batch_size)
                           if objective.VALIDATES and len(val_images) > 1 else None)
    return model, _images_trained(history, steps, batch, len(train))


def _described(cfg: PretrainConfig, arch: str) -> str:
    return f"{arch} from {cfg.init} ({backbones.origin(cfg.weights)} weights)" if cfg.init else arch


def _log_problems(source, report, log) -> None:
    """Files that failed while streaming, and the objective's warnings about what it learned."""
    report_skipped(source.failed, log, "while streaming")
    for w in report.warnings:
        log(f"warning: {w}")


def _encoder(cfg: PretrainConfig, shape, blocks):
    """(the encoder to pretrain, the blocks its objective mirrors): the --arch encoder, or the
    --init backbone with a decoder's blocks made for it (the autoencoder objectives')."""
    if not cfg.init:
        return models.build_encoder(shape, blocks, cfg.arch), blocks
    encoder = backbones.build(cfg.init, cfg.weights, cfg.image_size, shape[-1])
    return encoder, backbones.decoder_blocks(encoder)


def _architecture(cfg: PretrainConfig, arch: str, blocks, channels: int) -> dict:
    """The manifest's `arch` (the preset's blocks, or the backbone and its weights) and the
    input handling a backbone does inside the model."""
    if not cfg.init:
        return {"arch": {"preset": arch, "blocks": [vars(b) for b in blocks]}}
    return {"arch": {"preset": arch, "blocks": [], "init": cfg.init, "weights": backbones.origin(cfg.weights)},
            "in_model": backbones.input_handling(arch, cfg.image_size, channels)}


def _train_images(cfg, source, train_idx, run) -> stream.ImageSet:
    """The images to train on; files are decoded once, not every epoch (removed when the run ends)."""
    decoded, index = stream.decode_once(source, train_idx, cfg.image_size, cfg.epochs, run.log)
    return stream.ImageSet(run.temporary(decoded), index, cfg.image_size)


def _resolve_epochs(cfg: PretrainConfig, n_train: int, run: Run) -> PretrainConfig:
    """cfg with its epochs: --epochs, else DEFAULT_EPOCHS passes, fewer for a pool so large that they
    would train on more than DEFAULT_IMAGES images (a bounded default cost; --epochs for more)."""
    if cfg.epochs is not None:
        return cfg
    epochs = max(1, min(DEFAULT_EPOCHS, -(-DEFAULT_IMAGES // max(n_train, 1))))
    run.note(epochs=epochs)
    if epochs < DEFAULT_EPOCHS:
        run.log(f"{epochs} epochs: the default trains on at most {DEFAULT_IMAGES:,} images "
                f"({n_train:,} a pass); --epochs for more")
    return dataclasses.replace(cfg, epochs=epochs)


def _report(objective, model, train, val_images, watch):
    """The objective's report, with the online probe's k-NN accuracies when it watched: the
    last epoch's, the encoder's before pretraining, the raw pixels'."""
    report = objective.report(model, train, val_images) if model is not None else objectives.Report({})
    if watch is not None:
        if model is None:  # no epoch ran: the probe scores the encoder as --start left it
            watch.score()
        report.metrics.update(probe_knn=watch.last, probe_knn_start=watch.start, probe_knn_pixels=watch.pixels)
    return report


def _options(cfg: PretrainConfig, learning_rate: float, batch: int, steps: int) -> objectives.Options:
    return objectives.Options(learning_rate, batch, cfg.seed, steps, cfg.temperature,
                              tuple(cfg.projector) if cfg.projector else None, cfg.crop, cfg.blur, cfg.jitter)


def _images_trained(history, steps: int | None, batch: int, count: int) -> int:
    """Images the fit trained on in this process (epochs resumed from a backup are not counted)."""
    per_epoch = steps * batch if steps else count  # full batches cut from reshuffled passes
    return per_epoch * len(history.history.get("loss", []))


def _online_probe(cfg, encoder, channels: int, log):
    """The --probe-data callback: up to PROBE_IMAGES labeled images from outside the labeled
    source's test split (checked before training starts), or None."""
    if not cfg.probe_data:
        return None
    labeled = stream.open_source(cfg.probe_data, True, cfg.image_size, channels)
    data.check_classes(labeled, cfg.probe_data)
    if labeled.test_mask is not None:
        pool = np.flatnonzero(~labeled.test_mask)
    else:
        pool = data.split_test(labeled.labels, labeled.ids, DEFAULT_TEST_FRACTION)[0]
    n_classes = len(labeled.class_names)
    per_class = min(max(2, PROBE_IMAGES // n_classes), int(np.bincount(labeled.labels[pool], minlength=n_classes).min()))
    if per_class < 2:
        raise TransferError(f"--probe-data {cfg.probe_data}: every class needs at least 2 labeled images outside "
                            "its test split")
    chosen = stream.load(labeled, data.sample_per_class(labeled.labels, pool, per_class, cfg.seed,
                                                        labeled.class_names), cfg.image_size)
    watch = probe.OnlineProbe(encoder, chosen.images, chosen.labels, n_classes, cfg.epochs, cfg.seed)
    log(f"online probe: k-NN accuracy on {len(chosen)} labeled images of {cfg.probe_data} (half reference, half "
        f"scored; outside its test split) every {watch.every} epoch(s), column probe_knn; before pretraining "
        f"{100 * watch.start:.1f}%, raw pixels {100 * watch.pixels:.1f}%")
    return watch


def _write_extras(cfg, run: Run, encoder, model, source, val_images, report) -> dict | None:
    """The pretraining ids (to detect test leakage later), the preview, the visualize/ report and
    the two-view objectives' projection head (the `projector` readout); returns the head's
    manifest entry (None: the objective has none)."""
    artifacts.save_pretrain_ids(run.staging, source.ids)
    if cfg.plots and report.preview is not None:
        save_preview(run.staging / report.preview_name, val_images[: len(report.preview)], report.preview)
    if report.preview is not None:  # held-out images, then what the objective made of them
        board.write_images(cfg.tensorboard, run.run_id, Path(report.preview_name).stem,
                           np.concatenate([val_images[: len(report.preview)], report.preview]), step=cfg.epochs)
    if cfg.plots:
        visualize.write_report(encoder, run.staging / "visualize", image=val_images[0], layer=None, units=None,
                               run_dir=run.staging, seed=cfg.seed,
                               title=f"{cfg.objective} encoder, {cfg.arch} ({Path(cfg.out).name})")
    head = getattr(model, "projector", None)
    if head is None:
        return None
    return {"file": PROJECTOR_FILE, "sha256": artifacts.save_model(head, run.staging / PROJECTOR_FILE)}


def _row_fields(cfg, metrics: dict, source, n_train: int, trained: int, fit_seconds: float) -> dict:
    images_per_second = trained / fit_seconds
    flops = metrics.get("train_flops_per_image")
    return {"image_size": cfg.image_size, "channels": source.channels, "n_train": n_train,
            "batch_size": cfg.batch_size, "skipped_files": source.unreadable(),
            **{k: metrics.get(k) for k in ("recon_mse", "baseline_zeros_mse", "baseline_mean_mse", "probe_knn",
                                           "probe_knn_start", "probe_knn_pixels", "view_agreement")},
            "images_per_second": round(images_per_second, 1), "images_trained": trained,
            "train_seconds": round(fit_seconds, 3), "train_flops_per_image": flops,
            "gflops_per_second": float(f"{flops * images_per_second / 1e9:.3g}") if flops else None}


def _log_metrics(m: dict, out, log) -> None:
    if "recon_mse" in m:
        log(f"reconstruction MSE {m['recon_mse']:.5f} (all-zeros {m['baseline_zeros_mse']:.5f}, "
            f"mean image {m['baseline_mean_mse']:.5f}) -> {Path(out)}")
    else:
        log(", ".join([f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)] or ["encoder"]) + f" -> {Path(out)}")
