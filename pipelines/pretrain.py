"""Pretrain an encoder on unlabeled images and save it as a run directory."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipelines import visualize
from pipelines.common import config_dict, encoder_blocks, holdout_split, record_failure, report_skipped, save_preview
from transfer import architectures, artifacts, data, models, objectives, results, training
from transfer.config import PretrainConfig
from transfer.errors import TrainingDiverged, TransferError


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
    staging, resumed = artifacts.start_run_dir(cfg.out, cfg.overwrite, config_dict(cfg))
    if resumed:
        log(f"resuming the interrupted run in {staging}")
    try:
        dataset = data.load_unlabeled(cfg.data, cfg.image_size, cfg.channels)
        report_skipped(dataset, log)
        train_idx, val_idx = holdout_split(dataset.ids)
        train_images, val_images = dataset.images[train_idx], dataset.images[val_idx]
        channels = dataset.images.shape[-1]
        log(f"pretraining {cfg.objective} on {len(train_idx)} images ({len(val_idx)} held out), "
            f"{cfg.image_size}x{cfg.image_size}x{channels}, arch {cfg.arch}")

        training.set_seed(cfg.seed)
        encoder = models.build_encoder((cfg.image_size, cfg.image_size, channels), blocks, cfg.arch)
        fit_start = time.perf_counter()
        outcome = objective.train(
            encoder, blocks, train_images, val_images,
            epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
            history_path=staging / "history.csv", backup_dir=staging / "backup", log=log, seed=cfg.seed,
        )
        fit_seconds = time.perf_counter() - fit_start
        for w in outcome.warnings:
            log(f"warning: {w}")

        digest = artifacts.save_model(encoder, staging / "encoder.keras")
        artifacts.save_pretrain_ids(staging, dataset.ids)
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
            "data": {"source": cfg.data, "images": len(dataset), "skipped": len(dataset.skipped),
                     "fingerprint": dataset.fingerprint()},
            "metrics": outcome.metrics,
            "versions": artifacts.versions(),
        }
        if cfg.plots:
            visualize.write_report(encoder, staging / "visualize", image=val_images[0], layer=None,
                                   units=None, run_dir=staging, seed=cfg.seed,
                                   title=f"{cfg.objective} encoder, {cfg.arch} ({Path(cfg.out).name})")
        artifacts.write_json(staging / artifacts.MANIFEST, manifest)
        out = artifacts.finish_run_dir(staging, cfg.out)
    except TrainingDiverged as exc:
        shutil.rmtree(staging, ignore_errors=True)
        record_failure(cfg.results, {"run_id": run_id, "command": "pretrain", "experiment": cfg.experiment,
                                     "data": cfg.data, "objective": cfg.objective, "method": cfg.objective,
                                     "arch": cfg.arch, "seed": cfg.seed, "epochs": cfg.epochs,
                                     "learning_rate": cfg.learning_rate, "run_dir": str(cfg.out)}, exc)
        raise
    except TransferError:
        shutil.rmtree(staging, ignore_errors=True)  # bad input: nothing worth resuming
        raise

    row = {
        "run_id": run_id, "timestamp": results.now(), "command": "pretrain", "status": "ok", "experiment": cfg.experiment,
        "data": cfg.data, "objective": cfg.objective, "method": cfg.objective, "arch": cfg.arch,
        "image_size": cfg.image_size, "channels": channels, "n_train": len(train_idx), "seed": cfg.seed,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
        "recon_mse": outcome.metrics.get("recon_mse"),
        "baseline_zeros_mse": outcome.metrics.get("baseline_zeros_mse"),
        "baseline_mean_mse": outcome.metrics.get("baseline_mean_mse"),
        "skipped_files": len(dataset.skipped), "seconds": round(time.perf_counter() - start, 2),
        "images_per_second": round(len(train_idx) * cfg.epochs / fit_seconds, 1),
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
