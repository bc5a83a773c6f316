"""Fit a dense head on a (pretrained or random) encoder for a labeled task; log one row."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pipelines.common import config_dict, encoder_blocks, report_skipped, staged_run
from transfer import architectures, artifacts, data, distribute, heads, models, results, stream, training
from transfer.config import FineTuneConfig
from transfer.errors import TransferError


def method_name(objective: str | None, freeze: str, unfreeze_top: int = 0) -> str:
    """The label compare groups by: pixels-logreg, random-frozen, scratch,
    <objective>-frozen, <objective>-top<K> (top K blocks unfrozen), <objective>-finetuned."""
    if objective == "pixels":
        return "pixels-logreg"
    if objective is None:
        if freeze == "none":
            return "scratch"
        return f"random-top{unfreeze_top}" if unfreeze_top else "random-frozen"
    if freeze == "none":
        return f"{objective}-finetuned"
    return f"{objective}-top{unfreeze_top}" if unfreeze_top else f"{objective}-frozen"


def _resolve_encoder(cfg: FineTuneConfig):
    """(encoder or None, manifest or None, image_size, channels or None, blocks or None)."""
    if cfg.encoder == "pixels":
        return None, None, cfg.image_size, cfg.channels, None
    if cfg.encoder == "random":
        blocks = encoder_blocks(cfg)
        architectures.block_shapes(blocks, cfg.image_size, cfg.arch)
        return None, None, cfg.image_size, cfg.channels, blocks
    encoder, manifest = artifacts.load_model_run(cfg.encoder, "encoder")
    pre = manifest["preprocessing"]
    if cfg.channels is not None and cfg.channels != pre["channels"]:
        raise TransferError(
            f"the encoder takes {pre['channels']}-channel images; --channels {cfg.channels} cannot serve it"
        )
    return encoder, manifest, int(pre["image_size"]), int(pre["channels"]), None


@dataclass
class TestSplit:
    """The test images: listed, streamed through the model at evaluation, never all in memory."""

    source: stream.Listing
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> np.ndarray:
        return self.source.ids[self.index]

    def batches(self, image_size: int, batch_size: int = 256):
        return stream.dataset(self.source, self.index, image_size, batch_size=batch_size, with_labels=True)


def _load_splits(cfg: FineTuneConfig, image_size: int, channels: int | None, log):
    """(source, labeled training images in memory, TestSplit)."""
    source = stream.open_source(cfg.data, True, image_size, channels)
    report_skipped(source.skipped, log)
    data.check_classes(source, cfg.data)
    if cfg.test_data:
        test_source = stream.open_source(cfg.test_data, True, image_size, source.channels, source.class_names)
        report_skipped(test_source.skipped, log)
        pool, test = np.arange(len(source)), TestSplit(test_source, np.arange(len(test_source)))
    elif source.test_mask is not None:
        pool, test = np.flatnonzero(~source.test_mask), TestSplit(source, np.flatnonzero(source.test_mask))
    else:
        pool, test_idx = data.split_test(source.labels, source.ids, cfg.test_fraction)
        test = TestSplit(source, test_idx)
    chosen = data.sample_per_class(source.labels, pool, cfg.labels_per_class, cfg.seed, source.class_names)
    if len(test) == 0:
        raise TransferError(f"{cfg.data}: the test split is empty; give --test-data or more images")
    # The labeled budget is decoded into memory (few labels is the point); the test split streams.
    train = stream.load(source, chosen, image_size)
    report_skipped(train.skipped[len(source.skipped):], log, "while decoding")
    return source, train, test


def run(cfg: FineTuneConfig, log=print) -> dict:
    """Fine-tune, save the classifier run directory, append and return the results row."""
    start = time.perf_counter()
    run_id = results.new_run_id("fine-tune")
    out = Path(cfg.out) if cfg.out else Path("runs") / run_id
    strategy = distribute.make_strategy(cfg.strategy)
    chief = distribute.cluster()["chief"] if distribute.is_multiworker(strategy) else True
    # First: a finished run is reported before any model or data is loaded.
    if chief:
        staging, resumed = artifacts.start_run_dir(out, cfg.overwrite, config_dict(cfg))
        if resumed:
            log(f"resuming the interrupted run in {staging}")
    else:  # only the chief writes; a worker's files go to a scratch directory
        staging = Path(tempfile.mkdtemp(prefix="transfer-worker-"))
    with staged_run(staging, chief, cfg.results, lambda: {
            "run_id": run_id, "command": "fine-tune", "experiment": cfg.experiment, "data": cfg.data,
            "encoder": cfg.encoder, "method": method, "labels_per_class": cfg.labels_per_class or "all",
            "seed": cfg.seed, "epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "run_dir": str(out)}):
        with strategy.scope():  # models built and trained under the tf.distribute strategy
            encoder, manifest, image_size, channels, blocks = _resolve_encoder(cfg)
            dataset, train, test = _load_splits(cfg, image_size, channels, log)
            channels = train.images.shape[-1]
            objective = manifest["objective"] if manifest else ("pixels" if cfg.encoder == "pixels" else None)
            method = method_name(objective, cfg.freeze, cfg.unfreeze_top)
            leaked = artifacts.count_leaked(cfg.encoder, test.ids) if manifest else None
            if leaked:
                log(f"warning: {leaked} of {len(test)} test images were in the encoder's pretraining data")
            training.set_seed(cfg.seed)
            if encoder is None and blocks is not None:
                encoder = models.build_encoder((image_size, image_size, channels), blocks, cfg.arch)
            log(f"fine-tuning {method} on {len(train)} labeled images of {len(train.class_names)} classes, "
                f"testing on {len(test)}")
            if encoder is None:
                fit = _fit_pixels
            else:
                fit = _fit_frozen if cfg.freeze == "all" else _fit_end_to_end
            try:
                classifier, metrics = fit(cfg, encoder, train, test, staging, log)
            except distribute.PEER_ERRORS as exc:
                raise distribute.WorkerFailed(f"distributed training failed: {distribute.describe(exc)}") from None
            n_test = metrics.pop("n_test")
            if not chief:
                shutil.rmtree(staging, ignore_errors=True)
                log(f"worker finished (test accuracy {metrics['test_accuracy']:.4f}); the chief writes the run")
                return {}
        # Saved outside the strategy's scope: inside it, reading mirrored variables is a collective
        # that the other workers, already finished, would never join.
        digest = artifacts.save_model(classifier, staging / "classifier.keras")
        artifacts.write_json(staging / artifacts.MANIFEST, {
            "format": artifacts.FORMAT, "format_version": artifacts.FORMAT_VERSION, "kind": "classifier",
            "run_id": run_id, "created": results.now(),
            "model_file": "classifier.keras", "model_sha256": digest,
            "class_names": train.class_names,
            "input_shape": [image_size, image_size, channels],
            "preprocessing": data.preprocessing_contract(image_size, channels),
            "encoder": {"source": cfg.encoder, "objective": objective,
                        "sha256": manifest["model_sha256"] if manifest else None},
            "method": method, "freeze": cfg.freeze, "readout": cfg.readout,
            "data": {"source": cfg.data, "fingerprint": dataset.fingerprint()},
            "metrics": metrics, "versions": artifacts.versions(),
        })
        out = artifacts.finish_run_dir(staging, out)

    row = {
        "run_id": run_id, "timestamp": results.now(), "command": "fine-tune", "status": "ok", "experiment": cfg.experiment,
        "data": cfg.data, "test_data": cfg.test_data, "encoder": cfg.encoder,
        "objective": objective or "random", "method": method,
        "arch": manifest["arch"]["preset"] if manifest else (None if encoder is None else cfg.arch),
        "image_size": image_size, "channels": channels,
        "freeze": cfg.freeze if encoder is not None else None,
        "readout": cfg.readout if encoder is not None else None,
        "head": (",".join(map(str, cfg.head)) or "linear") if encoder is not None else None,
        "unfreeze_top": cfg.unfreeze_top if encoder is not None and cfg.freeze == "all" else None,
        "labels_per_class": cfg.labels_per_class or "all",
        "n_train": len(train), "n_test": n_test, "seed": cfg.seed, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
        "test_in_pretraining": leaked, "skipped_files": _skipped_count(dataset, test.source),
        "strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync,
        "workers": distribute.workers(strategy),
        "seconds": round(time.perf_counter() - start, 2),
        "peak_memory_mb": round(training.peak_memory_mb(), 1), "run_dir": str(out), **metrics,
    }
    results.append_row(cfg.results, row)
    log(f"{method}: test accuracy {metrics['test_accuracy']:.4f} ({row['seconds']:.1f}s) -> {out}")
    return row


def _skipped_count(*sources) -> int:
    """Unreadable files of the distinct sources (listing and streaming alike)."""
    unique = {id(s): s for s in sources}.values()
    return sum(len(s.skipped) + len(s.failed) for s in unique)


def _compile(model, learning_rate, steps_per_execution: int = 1):
    """Adam + cross-entropy. On small cached features, one `fit` step costs less than Keras's
    per-step overhead, so the head runs a whole epoch per call (steps_per_execution)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    distribute.prepare_model(model, _example_batch(model, labels=True))


def _example_batch(model, labels: bool = False):
    """Two blank examples shaped like the model's input (and labels), to build it under multiworker."""
    x = np.zeros((2, *model.input.shape[1:]), np.float32)
    return (x, np.zeros((2,), np.int64)) if labels else x


def _fit_frozen(cfg, encoder, train, test, staging, log):
    """Frozen encoder: features computed once, the head fit on them; then optionally
    the top `unfreeze_top` blocks trained further at a low learning rate."""
    models.freeze(encoder)
    features = models.build_features(encoder, cfg.readout, frozen=True)
    before = training.snapshot_weights(encoder)
    distribute.prepare_model(features, _example_batch(features))
    f_train = features.predict(train.images, batch_size=256, verbose=0)
    fit_start = time.perf_counter()
    head = _fit_head(cfg, f_train, train, staging, log)
    seconds = time.perf_counter() - fit_start
    classifier = models.build_classifier(features, head)
    _compile(classifier, cfg.learning_rate)
    metrics = {"encoder_unchanged": training.weights_identical(encoder, before)}
    if cfg.unfreeze_top:
        unfrozen = models.unfreeze_top(encoder, cfg.unfreeze_top)
        log(f"unfreezing {len(unfrozen)} layer(s) of the top {cfg.unfreeze_top} block(s), BatchNorm kept frozen")
        _compile(classifier, cfg.fine_tune_learning_rate)
        fit_start = time.perf_counter()
        training.fit(classifier, train.images, train.labels, epochs=cfg.fine_tune_epochs,
                     batch_size=cfg.batch_size, history_path=staging / "history-unfreeze.csv",
                     backup_dir=staging / "backup-unfreeze", log=log, log_prefix="fine-tune ")
        seconds = time.perf_counter() - fit_start
        metrics["encoder_unchanged"] = None  # by design it changed; the column audits frozen runs
    metrics.update(_evaluate(classifier, train, test))
    metrics["images_per_second"] = round(len(train) * max(cfg.epochs, 1) / max(seconds, 1e-9), 1)
    return classifier, metrics


def _fit_head(cfg, f_train, train, staging, log):
    """The head on cached features: an exact logistic-regression solve when it is linear,
    else Adam for `epochs` (cheap: no encoder pass per epoch)."""
    mean, var = heads.standardization(f_train)
    n_classes = len(train.class_names)
    head = models.build_head(f_train.shape[1], n_classes, cfg.head, cfg.dropout, mean, var)
    if not cfg.head:
        z = (f_train - mean) / np.sqrt(var + models.VARIANCE_FLOOR)
        weights, bias = heads.fit_logistic(z, train.labels, n_classes)
        head.get_layer("head_out").set_weights([weights, bias])
        _compile(head, cfg.learning_rate)
        loss, acc = head.evaluate(f_train, train.labels, verbose=0)
        (staging / "history.csv").write_text(f"epoch,accuracy,loss\n0,{acc:.6f},{loss:.6f}\n")
        log(f"linear head solved: train accuracy {acc:.4f}")
        return head
    _compile(head, cfg.learning_rate, steps_per_execution=-(-len(f_train) // cfg.batch_size))
    training.fit(head, f_train, train.labels, epochs=cfg.epochs, batch_size=cfg.batch_size,
                 history_path=staging / "history.csv", log=log, log_prefix="head ")  # cheap to redo: no backup
    return head


def _evaluate(classifier, train, test: TestSplit) -> dict:
    """Accuracy and loss on the streamed test split (images that fail to decode are not counted)."""
    before = len(test.source.failed)
    result = classifier.evaluate(test.batches(classifier.input.shape[1]), verbose=0, return_dict=True)
    n_test = len(test) - (len(test.source.failed) - before)
    _, train_acc = classifier.evaluate(train.images, train.labels, batch_size=256, verbose=0)
    return {"test_accuracy": float(result["accuracy"]), "test_loss": float(result["loss"]),
            "train_accuracy": float(train_acc), "n_test": n_test}


def _fit_end_to_end(cfg, encoder, train, test, staging, log):
    """Encoder and head trained together (from scratch when the encoder is random)."""
    features = models.build_features(encoder, cfg.readout, frozen=False)
    head = models.build_head(features.output.shape[1], len(train.class_names), cfg.head, cfg.dropout)
    classifier = models.build_classifier(features, head)
    _compile(classifier, cfg.learning_rate)
    fit_start = time.perf_counter()
    training.fit(classifier, train.images, train.labels, epochs=cfg.epochs, batch_size=cfg.batch_size,
                 history_path=staging / "history.csv", backup_dir=staging / "backup", log=log, log_prefix="train ")
    seconds = time.perf_counter() - fit_start
    training.recalibrate_batchnorm(encoder, train.images, cfg.batch_size, seed=cfg.seed)
    return classifier, {**_evaluate(classifier, train, test),
                        "images_per_second": round(len(train) * cfg.epochs / seconds, 1)}


def _fit_pixels(cfg, encoder, train, test, staging, log):
    """Baseline: multinomial logistic regression on standardized raw pixels, its L2
    strength chosen by cross-validation on the labeled training images only."""
    x_train = train.images.reshape(len(train), -1)
    mean, var = heads.standardization(x_train)
    n_classes = len(train.class_names)
    z = (x_train - mean) / np.sqrt(var + models.VARIANCE_FLOOR)
    weights, bias = heads.fit_logistic(z, train.labels, n_classes, cross_validate=True)
    head = models.build_head(x_train.shape[1], n_classes, (), 0.0, mean, var)
    head.get_layer("head_out").set_weights([weights, bias])
    inputs = keras.Input(train.images.shape[1:], name="image")
    classifier = keras.Model(inputs, head(keras.layers.Flatten(name="pixels")(inputs)), name="classifier")
    _compile(classifier, cfg.learning_rate)
    (staging / "history.csv").write_text("epoch\n0\n")
    return classifier, _evaluate(classifier, train, test)
