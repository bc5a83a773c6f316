"""Pretrain an encoder on unlabeled images and save it as a run directory."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from pipelines import visualize
from pipelines.common import config_dict, encoder_blocks, holdout_split, report_skipped, staged_run, save_preview
from transfer import architectures, artifacts, data, distribute, models, objectives, results, stream, training
from transfer.config import PretrainConfig


def run(cfg: PretrainConfig, log=print) -> dict:
    """Train, save `cfg.out` (encoder.keras, manifest.json, history.csv, config.json,
    pretrain_ids.npy, and a preview PNG: reconstructions.png for the autoencoder,
    views.png of augmented views for contrastive), append a row to the results table.

    Returns the results row.
    """
    start = time.perf_counter()
    run_id = results.new_run_id("pretrain")
    objective = objectives.get(cfg.objective)
    blocks = encoder_blocks(cfg)
    architectures.block_shapes(blocks, cfg.image_size, cfg.arch)  # refuse a bad size before loading data
    strategy = distribute.make_strategy(cfg.strategy)
    chief = distribute.cluster()["chief"] if distribute.is_multiworker(strategy) else True
    if chief:
        staging, resumed = artifacts.start_run_dir(cfg.out, cfg.overwrite, config_dict(cfg))
        if resumed:
            log(f"resuming the interrupted run in {staging}")
    else:  # only the chief writes artifacts; a worker's files go to a scratch directory
        staging = Path(tempfile.mkdtemp(prefix="transfer-worker-"))
    with staged_run(staging, chief, cfg.results, lambda: {
            "run_id": run_id, "command": "pretrain", "experiment": cfg.experiment, "data": cfg.data,
            "objective": cfg.objective, "method": cfg.objective, "arch": cfg.arch, "seed": cfg.seed,
            "epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "run_dir": str(cfg.out)}):
        source = stream.open_source(cfg.data, False, cfg.image_size, cfg.channels)
        report_skipped(source.skipped, log)
        train_idx, val_idx = holdout_split(source.ids)
        val_images = stream.load(source, val_idx, cfg.image_size).images
        train = stream.train_images(source, train_idx, cfg.image_size)
        channels = source.channels
        where = "in memory" if source.images is not None else "streamed"
        log(f"pretraining {cfg.objective} on {len(train_idx)} images ({where}; {len(val_idx)} held out), "
            f"{cfg.image_size}x{cfg.image_size}x{channels}, arch {cfg.arch}, "
            f"{strategy.num_replicas_in_sync} replica(s)")

        with strategy.scope():
            training.set_seed(cfg.seed)
            encoder = models.build_encoder((cfg.image_size, cfg.image_size, channels), blocks, cfg.arch)
            fit_start = time.perf_counter()
            try:
                outcome = objective.train(
                    encoder, blocks, train, val_images,
                    epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                    history_path=staging / "history.csv", backup_dir=staging / "backup", log=log, seed=cfg.seed,
                )
            except distribute.PEER_ERRORS as exc:
                raise distribute.WorkerFailed(f"distributed training failed: {distribute.describe(exc)}") from None
        fit_seconds = time.perf_counter() - fit_start
        report_skipped(source.failed, log, "while streaming")
        for w in outcome.warnings:
            log(f"warning: {w}")
        if not chief:
            shutil.rmtree(staging, ignore_errors=True)
            log("worker finished; the chief writes the run directory and the results row")
            return {}

        digest = artifacts.save_model(encoder, staging / "encoder.keras")
        artifacts.save_pretrain_ids(staging, source.ids)
        if outcome.preview is not None and cfg.plots:
            save_preview(staging / outcome.preview_name, val_images[: len(outcome.preview)], outcome.preview)
        manifest = {
            "format": artifacts.FORMAT, "format_version": artifacts.FORMAT_VERSION, "kind": "encoder",
            "run_id": run_id, "created": results.now(),
            "model_file": "encoder.keras", "model_sha256": digest,
            "input_shape": [cfg.image_size, cfg.image_size, channels],
            "preprocessing": data.preprocessing_contract(cfg.image_size, channels),
            "arch": {"preset": cfg.arch, "blocks": [vars(b) for b in blocks]},
            "objective": cfg.objective,
            "data": {"source": cfg.data, "images": len(source), "skipped": len(source.skipped) + len(source.failed),
                     "fingerprint": source.fingerprint()},
            "metrics": outcome.metrics,
            "versions": artifacts.versions(),
        }
        if cfg.plots:
            visualize.write_report(encoder, staging / "visualize", image=val_images[0], layer=None,
                                   units=None, run_dir=staging, seed=cfg.seed,
                                   title=f"{cfg.objective} encoder, {cfg.arch} ({Path(cfg.out).name})")
        artifacts.write_json(staging / artifacts.MANIFEST, manifest)
        out = artifacts.finish_run_dir(staging, cfg.out)

    images_per_second = len(train_idx) * cfg.epochs / fit_seconds
    flops = outcome.metrics.get("train_flops_per_image")
    row = {
        "run_id": run_id, "timestamp": results.now(), "command": "pretrain", "status": "ok", "experiment": cfg.experiment,
        "data": cfg.data, "objective": cfg.objective, "method": cfg.objective, "arch": cfg.arch,
        "image_size": cfg.image_size, "channels": channels, "n_train": len(train_idx), "seed": cfg.seed,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
        "recon_mse": outcome.metrics.get("recon_mse"),
        "baseline_zeros_mse": outcome.metrics.get("baseline_zeros_mse"),
        "baseline_mean_mse": outcome.metrics.get("baseline_mean_mse"),
        "skipped_files": len(source.skipped) + len(source.failed), "seconds": round(time.perf_counter() - start, 2),
        "images_per_second": round(images_per_second, 1),
        "gflops_per_second": float(f"{flops * images_per_second / 1e9:.3g}") if flops else None,
        "train_flops_per_image": flops, "strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync,
        "workers": distribute.workers(strategy),
        "peak_memory_mb": round(training.peak_memory_mb(), 1), "run_dir": str(out),
    }
    results.append_row(cfg.results, row)
    m = outcome.metrics
    if "recon_mse" in m:
        log(f"reconstruction MSE {m['recon_mse']:.5f} (all-zeros {m['baseline_zeros_mse']:.5f}, "
            f"mean image {m['baseline_mean_mse']:.5f}) -> {Path(out)}")
    else:
        log(", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)) + f" -> {Path(out)}")
    return row
