"""Fit a dense head on a (pretrained or random) encoder for a labeled task; log one row."""

from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np

from pipelines.common import Run, encoder_blocks, report_skipped
from transfer import artifacts, data, distribute, heads, methods, models, stream, training
from transfer.config import FineTuneConfig
from transfer.errors import TransferError


def _resolve_encoder(cfg: FineTuneConfig):
    """(encoder or None, manifest or None, image_size, channels or None, blocks or None)."""
    if cfg.encoder == "pixels":
        return None, None, cfg.image_size, cfg.channels, None
    if cfg.encoder == "random":
        return None, None, cfg.image_size, cfg.channels, encoder_blocks(cfg)
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
    report_skipped(train.skipped, log, "while decoding")
    return source, train, test


def run(cfg: FineTuneConfig, log=print) -> dict:
    """Fine-tune, save the classifier run directory, append and return the results row
    ({} on a non-chief worker)."""
    with Run("fine-tune", cfg, cfg.out, log) as run:  # a finished run is reported before anything loads
        run.note(encoder=cfg.encoder, labels_per_class=cfg.labels_per_class or "all", epochs=cfg.epochs,
                 learning_rate=cfg.learning_rate)
        with run.distributed():  # models built and trained under the tf.distribute strategy
            encoder, manifest, image_size, channels, blocks = _resolve_encoder(cfg)
            source, train, test = _load_splits(cfg, image_size, channels, log)
            channels = train.images.shape[-1]
            objective = manifest["objective"] if manifest else ("pixels" if cfg.encoder == "pixels" else None)
            method = methods.name(objective, cfg.encoder, cfg.freeze, cfg.unfreeze_top)
            run.note(method=method)
            leaked = artifacts.count_leaked(cfg.encoder, test.ids) if manifest else None
            if leaked:
                log(f"warning: {leaked} of {len(test)} test images were in the encoder's pretraining data")
            training.set_seed(cfg.seed)
            if encoder is None and blocks is not None:
                encoder = models.build_encoder((image_size, image_size, channels), blocks, cfg.arch)
            log(f"fine-tuning {method} on {len(train)} labeled images of {len(train.class_names)} classes, "
                f"testing on {len(test)}")
            fit = _fit_pixels if encoder is None else _fit_frozen if cfg.freeze == "all" else _fit_end_to_end
            classifier, metrics = fit(cfg, encoder, train, test, run, log)
        if run.worker_done(f" (test accuracy {metrics['test_accuracy']:.4f})"):
            return {}
        out = run.save(classifier, "classifier", image_size, channels, class_names=train.class_names,
                       encoder={"source": cfg.encoder, "objective": objective,
                                "sha256": manifest["model_sha256"] if manifest else None},
                       method=method, freeze=cfg.freeze, readout=cfg.readout, metrics=metrics,
                       data={"source": cfg.data, "fingerprint": source.fingerprint()})
    trained = encoder is not None
    row = run.record(
        test_data=cfg.test_data, objective=objective or "random",
        arch=manifest["arch"]["preset"] if manifest else (cfg.arch if trained else None),
        image_size=image_size, channels=channels, freeze=cfg.freeze if trained else None,
        readout=cfg.readout if trained else None,
        head=(",".join(map(str, cfg.head)) or "linear") if trained else None,
        unfreeze_top=cfg.unfreeze_top if trained and cfg.freeze == "all" else None,
        n_train=len(train), batch_size=cfg.batch_size, test_in_pretraining=leaked,
        skipped_files=_skipped_count(source, test.source), **metrics)
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


def _fit_frozen(cfg, encoder, train, test, run, log):
    """Frozen encoder: features computed once, the head fit on them; then optionally
    the top `unfreeze_top` blocks trained further at a low learning rate."""
    models.freeze(encoder)
    features = models.build_features(encoder, cfg.readout, frozen=True)
    before = training.snapshot_weights(encoder)
    distribute.prepare_model(features, _example_batch(features))
    f_train = features.predict(train.images, batch_size=256, verbose=0)
    fit_start = time.perf_counter()
    head = _fit_head(cfg, f_train, train, run.staging, log)
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
                     batch_size=cfg.batch_size, history_path=run.staging / "history-unfreeze.csv",
                     backup_dir=run.backup_dir("backup-unfreeze"), log=log, log_prefix="fine-tune ")
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


def _fit_end_to_end(cfg, encoder, train, test, run, log):
    """Encoder and head trained together (from scratch when the encoder is random)."""
    features = models.build_features(encoder, cfg.readout, frozen=False)
    head = models.build_head(features.output.shape[1], len(train.class_names), cfg.head, cfg.dropout)
    classifier = models.build_classifier(features, head)
    _compile(classifier, cfg.learning_rate)
    fit_start = time.perf_counter()
    training.fit(classifier, train.images, train.labels, epochs=cfg.epochs, batch_size=cfg.batch_size,
                 history_path=run.staging / "history.csv", backup_dir=run.backup_dir("backup"), log=log,
                 log_prefix="train ")
    seconds = time.perf_counter() - fit_start
    training.recalibrate_batchnorm(encoder, train.images, cfg.batch_size, seed=cfg.seed)
    return classifier, {**_evaluate(classifier, train, test),
                        "images_per_second": round(len(train) * cfg.epochs / seconds, 1)}


def _fit_pixels(cfg, encoder, train, test, run, log):
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
    (run.staging / "history.csv").write_text("epoch\n0\n")
    return classifier, _evaluate(classifier, train, test)
