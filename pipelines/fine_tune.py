"""Fit a dense head on a (pretrained or random) encoder for a labeled task; log one row."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from dataclasses import dataclass, field

import keras
import numpy as np

from pipelines.common import Run, encoder_blocks, report_skipped
from transfer import (artifacts, augment, backbones, budget, distribute, heads, layers, lists, methods, mistakes, models,
                      results, selection, semi, splits, stream, training)
from transfer.architectures import READOUT_CANDIDATES
from transfer.config import FineTuneConfig
from transfer.errors import TransferError
from transfer.objectives import TWO_VIEW

ADAPT_BN_IMAGES = 2048  # pool images added to the labeled ones for --adapt-bn
DEFAULT_EPOCHS = 100  # passes over the labeled images by gradient, unless they would make fewer steps than
MIN_STEPS = 500  # this: a few dozen labels make one or two steps a pass, too few to train on


@dataclass
class Start:
    """What a fine-tune starts from: a loaded pretrain run (encoder, its projection head and
    manifest), or an encoder built once the data's channels are known (`build(image_size,
    channels)`: a random one of the arch options, or a keras.applications backbone), or
    nothing (the pixel baseline). `objective`: the pretraining its weights bring (a run's
    objective; imagenet or weights-file for a backbone), None for random weights and pixels."""

    image_size: int
    channels: int | None
    encoder: object = None
    projector: object = None
    manifest: dict | None = None
    build: object = None
    objective: str | None = None
    backbone: str | None = None  # transfer.backbones' key of a keras:NAME encoder


def _resolve_encoder(cfg: FineTuneConfig) -> Start:
    """What the fine-tune starts from; the projection head is loaded when the readout may use it."""
    if cfg.encoder == "pixels":
        return Start(cfg.image_size, cfg.channels)
    if cfg.encoder == "random":
        blocks = encoder_blocks(cfg)
        return Start(cfg.image_size, cfg.channels, build=lambda size, channels: models.build_encoder(
            (size, size, channels), blocks, cfg.arch))
    if backbones.is_backbone(cfg.encoder):
        return Start(cfg.image_size, cfg.channels, objective=backbones.objective(cfg.weights),
                     backbone=backbones.name_of(cfg.encoder),
                     build=lambda size, channels: backbones.build(cfg.encoder, cfg.weights, size, channels))
    run = artifacts.open_run(cfg.encoder, "encoder")
    projector = run.projector() if cfg.readout in ("auto", "projector") else None
    if cfg.readout == "projector" and projector is None:
        raise TransferError(f"--readout projector: {cfg.encoder} has no projection head (only the two-view objectives "
                            f"{', '.join(TWO_VIEW)} save one; encoders pretrained by older versions lack it); "
                            "choose another readout")
    layers.adopt(run.model)  # fused BatchNormalization when its top blocks or everything train
    run.serves(cfg.channels)
    return Start(run.image_size, run.channels, run.model, projector, run.manifest, objective=run.objective)


def _load_splits(cfg: FineTuneConfig, image_size: int, channels: int | None, run: Run):
    """(source, labeled training images in memory, the test images: streamed, never all in memory)."""
    found = splits.open_labeled(cfg.data, cfg.test_data, cfg.test_fraction, image_size, channels, run.log)
    run.note(duplicates_dropped=found.duplicates_dropped)
    # The labeled budget is decoded into memory (few labels is the point); the test split streams.
    if cfg.labels is None:
        train = found.labeled(cfg.labels_per_class, cfg.seed, image_size, run.log)
    else:
        train = found.at(_choose_labels(cfg, found, image_size, run), image_size, run.log)
    _classes_labeled(train, run)
    return found.source, train, found.test_set(image_size)


def _classes_labeled(train, run: Run) -> None:
    """The row records how many classes have labels; the terminal names those without (a class
    only the test set holds, or one a small choice missed): the classifier keeps them, and their
    test images count as errors. Fewer than 2 labeled classes cannot train a classifier."""
    present = set(np.unique(train.labels).tolist())
    run.note(classes_labeled=len(present))
    if len(present) < 2:
        raise TransferError(f"the labeled images cover {len(present)} class(es); a classifier needs labels of at "
                            "least 2")
    missing = [name for i, name in enumerate(train.class_names) if i not in present]
    if missing:
        run.log(f"no labeled images of {len(missing)} of {len(train.class_names)} classes ("
                + ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
                + "): the classifier keeps them, and their test images count as errors")


def _choose_labels(cfg: FineTuneConfig, found: splits.Splits, image_size: int, run: Run) -> np.ndarray:
    """The --labels images of the pool, chosen by --selection (on --select-encoder's features,
    whose readout the row records as select_readout)."""
    how = cfg.selection or "random"
    net, name = None, None
    if how in selection.BY_FEATURES:
        name = _select_encoder(cfg)
        net, size, _, _, readout = budget.feature_model(name, cfg.select_readout or "auto")
        if size is not None and size != image_size:
            raise TransferError(f"--select-encoder {name} takes {size}x{size} images; this fine-tune uses "
                                f"{image_size}x{image_size}")
        run.note(select_readout=readout)
        name += f" ({readout})" if readout else ""
    chosen = budget.choose(how, found.source, found.pool, cfg.labels, cfg.seed, net, image_size, cfg.purity)
    present = len(np.unique(found.source.labels[chosen]))
    run.log(f"{cfg.labels} labels in all, chosen by {how}" + (f" on {name}" if name else "")
            + f": {present} of {len(found.source.class_names)} classes have at least one")
    return chosen


def run(cfg: FineTuneConfig, log=print) -> dict:
    """Fine-tune, save the classifier run directory, append and return the results row
    ({} on a non-chief worker)."""
    with Run("fine-tune", cfg, cfg.out, log) as run:  # a finished run is reported before anything loads
        run.note(encoder=cfg.encoder, **label_budget(cfg), epochs=cfg.epochs,
                 learning_rate=cfg.learning_rate)
        with run.distributed():  # models built and trained under the tf.distribute strategy
            start = _resolve_encoder(cfg)
            image_size, manifest, encoder = start.image_size, start.manifest, start.encoder
            source, train, test = _load_splits(cfg, image_size, start.channels, run)
            channels = train.images.shape[-1]
            objective = start.objective or ("pixels" if cfg.encoder == "pixels" else None)
            method = methods.name(objective, cfg.encoder, cfg.freeze, cfg.unfreeze_top, semi=bool(cfg.unlabeled))
            run.note(method=method)
            leaked = _leaked(cfg, manifest, test, log)
            training.set_seed(cfg.seed)
            if start.build is not None:
                encoder = start.build(image_size, channels)
            log(f"fine-tuning {method} on {len(train)} labeled images of {len(train.class_names)} classes, "
                f"testing on {len(test)}")
            pool, leaked_pool = _open_pool(cfg, image_size, channels, test, run)
            job = Job(_resolve_epochs(cfg, len(train), run), encoder, start.objective is not None, train, test, pool,
                      run, log, projector=start.projector,
                      trainer=FixMatchTrainer(pool, leaked_pool) if pool is not None else SupervisedTrainer())
            if encoder is not None:
                _prepare_encoder(job)
            fit = _fit_pixels if encoder is None else _fit_frozen if cfg.freeze == "all" else _fit_end_to_end
            classifier, metrics = fit(job)
        if run.worker_done(f" (test accuracy {metrics['test_accuracy']:.4f})"):
            return {}
        metrics.update(_write_reports(run.staging, classifier, train, test))
        out = run.save(classifier, "classifier", image_size, channels, class_names=train.class_names,
                       **_started_from(cfg, start, objective, channels),
                       method=method, freeze=cfg.freeze, readout=job.readout, metrics=metrics,
                       data={"source": cfg.data, "fingerprint": source.fingerprint()})
    trained = encoder is not None
    row = run.record(
        test_data=cfg.test_data, objective=objective or "random", weights=backbones.origin(cfg.weights),
        arch=manifest["arch"]["preset"] if manifest else (start.backbone or cfg.arch) if trained else None,
        image_size=image_size, channels=channels, freeze=cfg.freeze if trained else None,
        readout=job.readout if trained else None, readout_choice=_readout_choice(job) if trained else None,
        adapt_bn=cfg.adapt_bn if trained else None,
        head=(",".join(map(str, cfg.head)) or "linear") if trained else None,
        unfreeze_top=cfg.unfreeze_top if trained and cfg.freeze == "all" else None,
        augment=cfg.augment if trained and (cfg.head or cfg.freeze == "none" or cfg.unfreeze_top or cfg.unlabeled)
        else "none", unlabeled=cfg.unlabeled,
        n_train=len(train), batch_size=cfg.batch_size, test_in_pretraining=leaked, **_budget_fields(cfg, train),
        **_skipped_counts(source, test.listing, pool), **metrics, **job.pace.row())
    log(f"{method}: test accuracy {metrics['test_accuracy']:.4f} ({row['seconds']:.1f}s) -> {out}")
    return row


def _write_reports(folder: Path, classifier, train, test) -> dict:
    """labeled.csv (the labeled images it learned from, `path,label` as `transfer select` writes:
    the next round's `select --exclude`) and what it gets wrong on the test split (`mistakes.write`)."""
    lists.write_label_list(folder / "labeled.csv", [train.name(i) for i in range(len(train))],
                               [train.class_names[c] for c in train.labels])
    return mistakes.write(folder, classifier, test, train.class_names)


def _resolve_epochs(cfg: FineTuneConfig, n_train: int, run: Run) -> FineTuneConfig:
    """cfg with its epochs: --epochs, else DEFAULT_EPOCHS passes over the n_train labeled images,
    more when those would make fewer than MIN_STEPS steps of --batch-size (on animals at 2 and
    4 labels per class, 100 passes left augmented scratch and the default recipe under-trained:
    benchmarks/finetune_recipe.py)."""
    if cfg.epochs is not None:
        return cfg
    epochs = default_epochs(n_train, cfg.batch_size)
    run.note(epochs=epochs)
    return dataclasses.replace(cfg, epochs=epochs)


def default_epochs(n_train: int, batch_size: int) -> int:
    """DEFAULT_EPOCHS passes over n_train images, or as many as make MIN_STEPS steps of batch_size."""
    return max(DEFAULT_EPOCHS, -(-MIN_STEPS // max(1, -(-n_train // batch_size))))


def label_budget(cfg: FineTuneConfig, pending: dict[str, str] | None = None) -> dict:
    """The row's label budget as data: `labels_per_class` (N, or "all") for a draw of N of every
    class; for a total, `labels` and how they were chosen (`selection`, `purity`, and for a
    selection by features, the features: `select_features`, the objective of a pretrain run or
    pixels, with `select_features_readout` when the readout is not the encoder's default, since
    choices through different readouts are different budgets). `pending` maps encoder
    directories not pretrained yet to the objective they will be (an experiment's plan), so a
    budget is named as it will be once they exist."""
    if cfg.labels is None:
        return {"labels_per_class": cfg.labels_per_class or "all"}
    how = cfg.selection or "random"
    fields = {"labels_per_class": None, "labels": cfg.labels, "selection": how,
              "purity": cfg.purity if how == "probcover" else None}
    if how in selection.BY_FEATURES:
        fields["select_features"], fields["select_features_readout"] = _features(
            _select_encoder(cfg), cfg.select_readout, pending)
    return fields


def budget_name(cfg: FineTuneConfig, pending: dict[str, str] | None = None) -> str:
    """The budget as a table names it: N, "all", or "T in all (how)" (`results.budget_name`)."""
    return results.budget_name(**label_budget(cfg, pending))


def _features(encoder: str, readout: str | None = None, pending: dict[str, str] | None = None) -> tuple:
    """(pixels, or the objective of a pretrain run (while it does not exist yet: the objective
    `pending` says it will be, else its folder's name); the readout when one is asked that is
    not the encoder's default, else None)."""
    if encoder == "pixels":
        return encoder, None
    try:
        manifest = artifacts.read_manifest(encoder, "encoder")
    except TransferError:
        return (pending or {}).get(encoder, Path(encoder).name), readout if readout not in (None, "auto") else None
    default = readout in (None, "auto", budget.auto_readout(manifest))
    return manifest["objective"], None if default else readout


def _select_encoder(cfg: FineTuneConfig) -> str:
    """The features a selection by features chooses by: --select-encoder, else a pretrained --encoder, else pixels."""
    pretrained_run = cfg.encoder not in ("random", "pixels") and not backbones.is_backbone(cfg.encoder)
    return cfg.select_encoder or (cfg.encoder if pretrained_run else "pixels")


def _started_from(cfg: FineTuneConfig, start: Start, objective: str | None, channels: int) -> dict:
    """The classifier manifest's `encoder` (its source, objective and the SHA-256 of its model or
    weights file; a backbone's weights) and the input handling a backbone does inside the model."""
    if not start.backbone:
        return {"encoder": {"source": cfg.encoder, "objective": objective,
                            "sha256": start.manifest["model_sha256"] if start.manifest else None}}
    weights_file = cfg.weights not in backbones.WEIGHTS_CHOICES
    return {"encoder": {"source": cfg.encoder, "objective": objective, "weights": backbones.origin(cfg.weights),
                        "sha256": artifacts.sha256_file(cfg.weights) if weights_file else None},
            "in_model": backbones.input_handling(start.backbone, start.image_size, channels)}


def _leaked(cfg: FineTuneConfig, manifest, test: stream.ImageSet, log) -> int | None:
    """How many test images the encoder was pretrained on (None: no pretrained encoder), with a warning."""
    leaked = artifacts.count_leaked(cfg.encoder, test.ids) if manifest else None
    if leaked:
        log(f"warning: {leaked} of {len(test)} test images were in the encoder's pretraining data")
    return leaked


def _budget_fields(cfg: FineTuneConfig, train) -> dict:
    """The row's label budget (`label_budget`), the encoder a selection was given, the classes it covers."""
    return {**label_budget(cfg), "select_encoder": cfg.select_encoder, "labeled_classes": len(np.unique(train.labels))}


def _skipped_counts(source, test_source, pool: stream.ImageSet | None) -> dict:
    """Unreadable files (at listing and while decoding) of every source the run read:
    `skipped_data` (--data), `skipped_test_data` (--test-data), `skipped_unlabeled`
    (--unlabeled), and their total `skipped_files`."""
    counts = {"skipped_data": source.unreadable()}
    if test_source is not source:
        counts["skipped_test_data"] = test_source.unreadable()
    if pool is not None:
        counts["skipped_unlabeled"] = pool.listing.unreadable()
    return {"skipped_files": sum(counts.values()), **counts}


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


@dataclass
class Job:
    """What a fit function works with."""

    cfg: FineTuneConfig
    encoder: object  # keras.Model, or None for the pixel baseline
    pretrained: bool
    train: stream.Listing  # the labeled images, in memory
    test: stream.ImageSet  # streamed at evaluation
    unlabeled: stream.ImageSet | None  # the pool of semi-supervised fine-tuning (streamed)
    run: Run
    log: object
    readout: str = "avg"  # the concrete readout (cfg.readout, or the one "auto" chose)
    readout_scores: dict | None = None  # "auto": mean CV accuracy of each candidate
    projector: object = None  # the encoder's projection head (two-view objectives), when the readout may use it
    head_metrics: dict = field(default_factory=dict)  # what fitting the head chose (probe_c)
    probes: dict = field(default_factory=dict)  # readout -> (features, cross_validated(...)): computed once
    trainer: "SupervisedTrainer | FixMatchTrainer | None" = None  # how the classifier trains by gradient
    pace: "Pace" = field(default_factory=lambda: Pace())  # images trained on and seconds, over every phase


@dataclass
class Pace:
    """What the training phases of a run timed: the images they trained on (an image once per
    pass; FixMatch: its labeled and both views of its unlabeled images) and their seconds, for
    a true `images_per_second` in every mode (an exact linear head: one feature pass)."""

    images: int = 0
    seconds: float = 0.0

    def add(self, images: int, seconds: float) -> None:
        self.images, self.seconds = self.images + int(images), self.seconds + seconds

    def row(self) -> dict:
        return {"images_trained": self.images, "train_seconds": round(self.seconds, 3),
                "images_per_second": round(self.images / self.seconds, 1) if self.seconds > 0 else None}


def _open_pool(cfg: FineTuneConfig, image_size: int, channels: int, test: stream.ImageSet,
               run: Run) -> tuple[stream.ImageSet | None, int]:
    """(the --unlabeled pool or None, how many test images are in it); its files are decoded
    once when FixMatch will draw more images than the pool holds (on digits: 300 passes), and
    removed when the run ends."""
    if not cfg.unlabeled:
        return None, 0
    log = run.log
    source = stream.open_source(cfg.unlabeled, False, image_size, channels)
    report_skipped(source.skipped, log)
    leaked = int(np.isin(source.ids, test.ids).sum())
    if leaked:
        log(f"warning: {leaked} of {len(test)} test images are in the unlabeled pool {cfg.unlabeled}")
    passes = cfg.steps * cfg.mu * cfg.batch_size / max(len(source), 1)
    decoded, index = stream.decode_once(source, np.arange(len(source)), image_size, passes, log)
    return stream.ImageSet(run.temporary(decoded), index, image_size), leaked


def _prepare_encoder(job: Job) -> None:
    """Before fitting: AdaBN if asked, then the readout ("auto": through the projection head
    when there is one, else the candidate whose linear probe has the best cross-validated
    accuracy on the labeled images; scratch reads out by average pooling, its features being
    not yet learned)."""
    cfg, encoder, train = job.cfg, job.encoder, job.train
    if cfg.adapt_bn:
        images = train.images
        if job.unlabeled is not None:
            images = np.concatenate([images, job.unlabeled.sample(ADAPT_BN_IMAGES)])
        models.unfreeze(encoder)
        training.recalibrate_batchnorm(encoder, images, 256, seed=cfg.seed)
        job.log(f"BatchNorm statistics re-estimated on {len(images)} target images (AdaBN)")
    job.readout = cfg.readout
    if cfg.readout != "auto":
        return
    job.readout = "avg"
    if cfg.freeze == "none" and not job.pretrained:
        return
    if job.projector is not None:  # a cross-validated choice from 2 labels a class missed it on 2 draws of 5
        job.readout = "projector"
        job.log("readout projector: through the encoder's pretrained projection head (--readout for another)")
        return
    models.freeze(encoder)
    n_classes = len(train.class_names)
    scores = {}
    for readout in READOUT_CANDIDATES:
        f = models.build_features(encoder, readout, frozen=True).predict(train.images, batch_size=256, verbose=0)
        job.probes[readout] = f, _probe(f, train.labels, n_classes)
        scores[readout] = job.probes[readout][1][3]
    if None in scores.values():
        job.log("readout avg (too few labels per class to cross-validate a choice)")
        return
    job.readout, job.readout_scores = max(scores, key=scores.get), scores
    job.log("readout chosen by cross-validation on the labeled images: "
            + ", ".join(f"{r} {s:.3f}" for r, s in scores.items()) + f" -> {job.readout}")


def _probe(f: np.ndarray, labels: np.ndarray, n_classes: int):
    """The linear probe on standardized features f: heads.cross_validated's (weights, bias, C, score)."""
    mean, var = heads.standardization(f)
    return heads.cross_validated((f - mean) / np.sqrt(var + models.VARIANCE_FLOOR), labels, n_classes)


def _readout_choice(job: Job) -> str:
    """How the readout was chosen, for the row: given, default, or cv (with the scores)."""
    if job.cfg.readout != "auto":
        return "given"
    if job.readout == "projector":
        return "head"  # an encoder with a projection head reads out through it
    if job.readout_scores is None:
        return "default"
    return "cv " + " ".join(f"{r}={s:.3f}" for r, s in job.readout_scores.items())


def _fit_frozen(job: Job):
    """Frozen encoder: the head fit first (on features computed once, unless a hidden head
    trains on augmented images); then optionally the top `unfreeze_top` blocks trained
    further at a low learning rate, and/or the unlabeled pool used (FixMatch)."""
    cfg, encoder = job.cfg, job.encoder
    models.freeze(encoder)
    features = models.build_features(encoder, job.readout, True, job.projector)
    before = training.snapshot_weights(encoder)
    distribute.prepare_model(features, _example_batch(features))
    head = _fit_head(job, features)
    classifier = models.build_classifier(features, head)
    _compile(classifier, cfg.learning_rate)
    metrics = dict(job.head_metrics)
    if cfg.unfreeze_top:
        unfrozen = models.unfreeze_top(encoder, cfg.unfreeze_top)
        job.log(f"unfreezing {len(unfrozen)} layer(s) of the top {cfg.unfreeze_top} block(s), BatchNorm kept frozen")
    if cfg.unfreeze_top or job.unlabeled:
        metrics = job.trainer.fit(job, classifier, cfg.fine_tune_learning_rate, cfg.fine_tune_epochs, "unfreeze")
    # by design the encoder changed when its top blocks trained; the column audits frozen runs
    metrics["encoder_unchanged"] = None if cfg.unfreeze_top else training.weights_identical(encoder, before)
    metrics.update(_evaluate(classifier, job.train, job.test))
    return classifier, metrics


class SupervisedTrainer:
    """Gradient training of the classifier on the labeled images, with the --augment policy
    in front (in the training model only), for the phase's epochs."""

    def fit(self, job: Job, classifier, learning_rate: float, epochs: int, phase: str) -> dict:
        cfg = job.cfg
        model = augment.training_model(classifier, augment.build(cfg.augment))
        _compile(model, learning_rate)
        start = time.perf_counter()
        history = training.fit(model, training.Arrays(job.train.images, job.train.labels, cfg.batch_size), epochs,
                               job.run.keep(phase))
        job.pace.add(len(job.train) * len(history.history.get("loss", [])), time.perf_counter() - start)
        return {}


class FixMatchTrainer:
    """FixMatch (`transfer.semi`) on the labeled images and the unlabeled pool, for cfg.steps
    steps (in epochs of semi.STEPS_PER_EPOCH, each backed up) in the phase it trains: the
    supervised trainer's epochs and learning rate do not apply (FixMatch's own optimizer
    takes --semi-learning-rate)."""

    def __init__(self, pool: stream.ImageSet, leaked: int):
        self.pool, self.leaked = pool, leaked  # the unlabeled images; the test images among them

    def fit(self, job: Job, classifier, learning_rate: float, epochs: int, phase: str) -> dict:
        cfg, pool = job.cfg, self.pool
        per_epoch = min(semi.STEPS_PER_EPOCH, cfg.steps)
        batch = cfg.batch_size
        ds = semi.batches(stream.ImageSet.of(job.train), pool, batch, cfg.mu, cfg.seed, per_epoch)
        policy = cfg.augment if cfg.augment != "none" else "label-preserving"
        target = None
        if cfg.align:  # uniform over the classes that have a label
            target = np.zeros(len(job.train.class_names), "float32")
            target[np.unique(job.train.labels)] = 1.0
        model = semi.FixMatch(classifier, augment.build(policy), augment.strong(policy), cfg.threshold,
                              cfg.unlabeled_weight, align=target, teacher=cfg.teacher)
        model.compile(optimizer=semi.optimizer(cfg.semi_learning_rate, cfg.steps))
        model.build(classifier.input.shape)  # built, so that a backup can be restored into it
        model.optimizer.build(classifier.trainable_variables)  # now: slots made in the step's first trace retrace it
        distribute.prepare_model(model, (_example_batch(classifier, labels=True), _example_batch(classifier)))
        epochs = -(-cfg.steps // per_epoch)
        job.log(f"semi-supervised (FixMatch): {cfg.steps} steps of {batch} labeled (drawn from {len(job.train)}) + "
                f"{cfg.mu * batch} unlabeled images (from {len(pool)}), threshold {cfg.threshold}"
                + (", pseudo-labels aligned to a uniform class distribution" if cfg.align else ""))
        start = time.perf_counter()
        history = training.fit(model, training.Batches(ds, per_epoch), epochs, job.run.keep("semi"))
        steps_run = per_epoch * len(history.history.get("loss", []))
        job.pace.add(steps_run * batch * (1 + 2 * cfg.mu), time.perf_counter() - start)
        report_skipped(pool.failed, job.log, "while streaming the unlabeled pool")
        mask = history.history.get("mask_rate") or [float("nan")]
        return {"mu": cfg.mu, "threshold": cfg.threshold, "unlabeled_weight": cfg.unlabeled_weight, "align": cfg.align,
                "teacher": cfg.teacher, "semi_learning_rate": cfg.semi_learning_rate,
                "steps": epochs * per_epoch, "mask_rate": round(float(mask[-1]), 4),
                "n_unlabeled": len(pool), "test_in_unlabeled": self.leaked}


def _fit_head(job: Job, features, history: str = "history.csv"):
    """The head on the frozen features: an exact logistic-regression solve when it is
    linear; else Adam for `epochs`, on augmented images through the frozen encoder, or on
    features computed once with --augment none (cheap: no encoder pass per epoch). Its
    epochs go to `history` in the staging directory."""
    cfg, train, log = job.cfg, job.train, job.log
    start = time.perf_counter()
    n_classes = len(train.class_names)
    cached = job.probes.get(job.readout)  # the readout's features and probe, when "auto" computed them
    f_train = cached[0] if cached else features.predict(train.images, batch_size=256, verbose=0)
    mean, var = heads.standardization(f_train)
    head = models.build_head(f_train.shape[1], n_classes, cfg.head, cfg.dropout, mean, var)
    staging = job.run.staging
    if not cfg.head:
        weights, bias, c, _ = cached[1] if cached else _probe(f_train, train.labels, n_classes)
        head.get_layer("head_out").set_weights([weights, bias])
        _compile(head, cfg.learning_rate)
        training.build_for(head, (f_train[:2], train.labels[:2]))
        loss, acc = head.evaluate(f_train, train.labels, verbose=0)
        (staging / history).write_text(f"epoch,accuracy,loss\n0,{acc:.6f},{loss:.6f}\n")
        log(f"linear head solved (L2 C={c:g}, chosen by cross-validation): train accuracy {acc:.4f}")
        job.head_metrics["probe_c"] = c
        job.pace.add(len(train), time.perf_counter() - start)  # one pass of the images (their features)
        return head
    if cfg.augment != "none":
        model = augment.training_model(models.build_classifier(features, head), augment.build(cfg.augment))
        _compile(model, cfg.learning_rate)
        fitted = training.fit(model, training.Arrays(train.images, train.labels, cfg.batch_size), cfg.epochs,
                              job.run.keep("head", history))
    else:
        _compile(head, cfg.learning_rate, steps_per_execution=-(-len(f_train) // cfg.batch_size))
        fitted = training.fit(head, training.Arrays(f_train, train.labels, cfg.batch_size), cfg.epochs,
                              job.run.keep("head", history, backups=False))  # cheap to redo: no backup
    job.pace.add(len(train) * len(fitted.history.get("loss", [])), time.perf_counter() - start)
    return head


def _evaluate(classifier, train, test: stream.ImageSet) -> dict:
    """Accuracy and loss on the streamed test split (images that fail to decode are not counted)."""
    before = len(test.failed)
    batches = test.batches(256, with_labels=True)
    training.build_for(classifier, batches)
    result = classifier.evaluate(batches, verbose=0, return_dict=True)
    n_test = len(test) - (len(test.failed) - before)
    # the training images batched as the test split is, so the test step is not traced again for them
    train_batches = stream.ImageSet.of_arrays(train.images, train.labels).batches(256, with_labels=True)
    _, train_acc = classifier.evaluate(train_batches, verbose=0)
    return {"test_accuracy": float(result["accuracy"]), "test_loss": float(result["loss"]),
            "train_accuracy": float(train_acc), "n_test": n_test}


def _fit_end_to_end(job: Job):
    """Encoder and head trained together (from scratch when the encoder is random). A
    pretrained encoder gets its head fit first on its frozen features (linear probing,
    then fine-tuning: the head's random start would otherwise disturb what was learned)."""
    cfg, encoder = job.cfg, job.encoder
    if job.pretrained:
        models.freeze(encoder)
        head = _fit_head(job, models.build_features(encoder, job.readout, True, job.projector), "history-head.csv")
        models.unfreeze(encoder)
    else:
        head = None
    features = models.build_features(encoder, job.readout, False, job.projector)
    if head is None:
        head = models.build_head(features.output.shape[1], len(job.train.class_names), cfg.head, cfg.dropout)
    classifier = models.build_classifier(features, head)
    metrics = job.trainer.fit(job, classifier, cfg.learning_rate, cfg.epochs, "train")
    if job.unlabeled is None:  # FixMatch's thousands of steps leave settled statistics
        training.recalibrate_batchnorm(features, job.train.images, cfg.batch_size, seed=cfg.seed)  # the head's too
    _compile(classifier, cfg.learning_rate)
    return classifier, {**job.head_metrics, **metrics, **_evaluate(classifier, job.train, job.test)}


def _fit_pixels(job: Job):
    """Baseline: multinomial logistic regression on standardized raw pixels, its L2
    strength chosen by cross-validation on the labeled training images only."""
    cfg, train, test, run = job.cfg, job.train, job.test, job.run
    start = time.perf_counter()
    x_train = train.images.reshape(len(train), -1)
    mean, var = heads.standardization(x_train)
    n_classes = len(train.class_names)
    weights, bias, *_ = _probe(x_train, train.labels, n_classes)
    job.pace.add(len(train), time.perf_counter() - start)
    head = models.build_head(x_train.shape[1], n_classes, (), 0.0, mean, var)
    head.get_layer("head_out").set_weights([weights, bias])
    inputs = keras.Input(train.images.shape[1:], name="image")
    classifier = keras.Model(inputs, head(keras.layers.Flatten(name="pixels")(inputs)), name="classifier")
    _compile(classifier, cfg.learning_rate)
    (run.staging / "history.csv").write_text("epoch\n0\n")
    return classifier, _evaluate(classifier, train, test)
