"""Fine-tuning as a library: `fine_tune(cfg, images, keep, log, encoder=...)` receives an opened
encoder (or none: the pixel baseline), the labeled, test and unlabeled images and its settings,
and returns the trained classifier with what it measured (`Result`). `pipelines/fine_tune.py`
only wires the command around it: the run directory, the data, the label budget, the row.

The recipe, by `cfg.freeze`:
- all: the head fit on the frozen features (an exact linear solve, or Adam for a hidden head),
  then optionally the top blocks trained further and/or the unlabeled pool used (FixMatch);
- none: a pretrained encoder's head fit first on its frozen features, then everything trained
  together (supervised with augmentation, or FixMatch on the pool); from scratch when random.
Every training phase goes through a trainer (`SupervisedTrainer`, `FixMatchTrainer`) with one
protocol: `fit(classifier, phase) -> metrics`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from transfer import augment, distribute, heads, models, semi, stream, training
from transfer.architectures import READOUT_CANDIDATES
from transfer.config import FineTuneConfig
from transfer.listing import Listing, report_skipped

ADAPT_BN_IMAGES = 2048  # pool images added to the labeled ones for --adapt-bn


@dataclass(frozen=True)
class Images:
    """The images a fine-tune learns from and is tested on."""

    train: Listing  # the labeled images, in memory
    test: stream.ImageSet  # streamed at evaluation
    pool: stream.ImageSet | None = None  # unlabeled images for FixMatch (streamed)
    pool_leaked: int = 0  # how many test images are in the pool (recorded, warned about by the caller)


@dataclass
class Pace:
    """What the training phases timed: the images they trained on (an image once per pass;
    FixMatch: its labeled and both views of its unlabeled images) and their seconds, for a true
    `images_per_second` in every mode (an exact linear head: one feature pass)."""

    images: int = 0
    seconds: float = 0.0

    def add(self, images: int, seconds: float) -> None:
        self.images, self.seconds = self.images + int(images), self.seconds + seconds

    def row(self) -> dict:
        return {"images_trained": self.images, "train_seconds": round(self.seconds, 3),
                "images_per_second": round(self.images / self.seconds, 1) if self.seconds > 0 else None}


@dataclass(frozen=True)
class Readout:
    """How the encoder's features are read out: its name, how it was chosen (for the row: given,
    default, head, or cv with each candidate's cross-validated score), and the features and
    linear probes "auto" computed on the labeled images, reused by the head."""

    name: str = "avg"
    choice: str = "given"
    probes: dict = field(default_factory=dict)  # readout -> (features, heads.cross_validated(...))


@dataclass
class Result:
    classifier: keras.Model
    metrics: dict  # test accuracy and loss, train accuracy, what the phases chose and trained
    readout: Readout | None  # None: the pixel baseline
    pace: Pace


Keep = Callable[..., training.Keep]  # (phase, history=None, backups=True) -> what a run keeps of that fit


@dataclass(frozen=True)
class Work:
    """What every step of one fine-tune reads: its settings, images, how its fits are kept, its log, its pace."""

    cfg: FineTuneConfig
    images: Images
    keep: Keep
    log: Callable[[str], None]
    pace: Pace


def fine_tune(cfg: FineTuneConfig, images: Images, keep: Keep, log=print, encoder=None, pretrained: bool = False,
              projector=None) -> Result:
    """The classifier `cfg` describes, trained on `images` from `encoder` (a keras.Model, pretrained
    or with random weights; None: logistic regression on raw pixels). `projector`: the encoder's
    projection head (the `projector` readout). `keep(phase, history, backups)` says what the run
    keeps of each fit (history file, backups, TensorBoard, progress: `Run.keep`)."""
    work = Work(cfg, images, keep, log, Pace())
    if encoder is None:
        classifier, metrics = _fit_pixels(work)
        return Result(classifier, metrics, None, work.pace)
    if cfg.classifier.adapt_bn:
        _adapt_batchnorm(work, encoder)
    readout = _readout(work, encoder, pretrained, projector)
    trainer = FixMatchTrainer(work) if images.pool is not None else SupervisedTrainer(work)
    fit = _fit_frozen if cfg.freeze == "all" else _fit_end_to_end
    classifier, metrics = fit(work, encoder, pretrained, projector, readout, trainer)
    return Result(classifier, metrics, readout, work.pace)


def _adapt_batchnorm(work: Work, encoder) -> None:
    """AdaBN: the encoder's BatchNorm statistics re-estimated on the labeled images (and up to
    ADAPT_BN_IMAGES of the pool)."""
    images = work.images.train.images
    if work.images.pool is not None:
        images = np.concatenate([images, work.images.pool.sample(ADAPT_BN_IMAGES)])
    models.unfreeze(encoder)
    training.recalibrate_batchnorm(encoder, images, 256, seed=work.cfg.seed)
    work.log(f"BatchNorm statistics re-estimated on {len(images)} target images (AdaBN)")


def _readout(work: Work, encoder, pretrained: bool, projector) -> Readout:
    """The readout: --readout when given; for "auto", through the projection head when there is
    one, else the candidate whose linear probe has the best cross-validated accuracy on the
    labeled images (scratch reads out by average pooling, its features being not yet learned)."""
    cfg, train = work.cfg, work.images.train
    if cfg.classifier.readout != "auto":
        return Readout(cfg.classifier.readout)
    if cfg.freeze == "none" and not pretrained:
        return Readout("avg", "default")
    if projector is not None:  # a cross-validated choice from 2 labels a class missed it on 2 draws of 5
        work.log("readout projector: through the encoder's pretrained projection head (--readout for another)")
        return Readout("projector", "head")
    models.freeze(encoder)
    probes = {}
    for readout in READOUT_CANDIDATES:
        f = models.build_features(encoder, readout, frozen=True).predict(train.images, batch_size=256, verbose=0)
        probes[readout] = f, _probe(f, train.labels, len(train.class_names))
    scores = {readout: probe[3] for readout, (_, probe) in probes.items()}
    if None in scores.values():
        work.log("readout avg (too few labels per class to cross-validate a choice)")
        return Readout("avg", "default", probes)
    best = max(scores, key=scores.get)
    work.log("readout chosen by cross-validation on the labeled images: "
             + ", ".join(f"{r} {s:.3f}" for r, s in scores.items()) + f" -> {best}")
    return Readout(best, "cv " + " ".join(f"{r}={s:.3f}" for r, s in scores.items()), probes)


def _probe(f: np.ndarray, labels: np.ndarray, n_classes: int):
    """The linear probe on standardized features f: heads.cross_validated's (weights, bias, C, score)."""
    mean, var = heads.standardization(f)
    return heads.cross_validated((f - mean) / np.sqrt(var + models.VARIANCE_FLOOR), labels, n_classes)


def _compile(model, learning_rate, steps_per_execution: int = 1):
    """Adam + cross-entropy. On small cached features, one `fit` step costs less than Keras's
    per-step overhead, so the head runs a whole epoch per call (steps_per_execution)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    distribute.prepare_model(model, _example_batch(model, labels=True))


def _example_batch(model, labels: bool = False):
    """Two blank examples shaped like the model's input (and labels), to build it under multiworker."""
    x = np.zeros((2, *model.input.shape[1:]), np.float32)
    return (x, np.zeros((2,), np.int64)) if labels else x


def _fit_frozen(work: Work, encoder, pretrained: bool, projector, readout: Readout, trainer):
    """Frozen encoder: the head fit first (on features computed once, unless a hidden head
    trains on augmented images); then optionally the top `unfreeze_top` blocks trained
    further at a low learning rate, and/or the unlabeled pool used (FixMatch)."""
    cfg = work.cfg
    models.freeze(encoder)
    features = models.build_features(encoder, readout.name, True, projector)
    before = training.snapshot_weights(encoder)
    distribute.prepare_model(features, _example_batch(features))
    head, metrics = _fit_head(work, features, readout)
    classifier = models.build_classifier(features, head)
    _compile(classifier, cfg.learning_rate)
    if cfg.unfreeze_top:
        unfrozen = models.unfreeze_top(encoder, cfg.unfreeze_top)
        work.log(f"unfreezing {len(unfrozen)} layer(s) of the top {cfg.unfreeze_top} block(s), BatchNorm kept frozen")
    if cfg.unfreeze_top or work.images.pool is not None:
        metrics.update(trainer.fit(classifier, "unfreeze"))
    # by design the encoder changed when its top blocks trained; the column audits frozen runs
    metrics["encoder_unchanged"] = None if cfg.unfreeze_top else training.weights_identical(encoder, before)
    metrics.update(_evaluate(classifier, work.images))
    return classifier, metrics


def _fit_end_to_end(work: Work, encoder, pretrained: bool, projector, readout: Readout, trainer):
    """Encoder and head trained together (from scratch when the encoder is random). A
    pretrained encoder gets its head fit first on its frozen features (linear probing,
    then fine-tuning: the head's random start would otherwise disturb what was learned)."""
    cfg, train = work.cfg, work.images.train
    head, metrics = None, {}
    if pretrained:
        models.freeze(encoder)
        head, metrics = _fit_head(work, models.build_features(encoder, readout.name, True, projector), readout,
                                  "history-head.csv")
        models.unfreeze(encoder)
    features = models.build_features(encoder, readout.name, False, projector)
    if head is None:
        head = models.build_head(features.output.shape[1], len(train.class_names), cfg.classifier.head,
                                 cfg.classifier.dropout)
    classifier = models.build_classifier(features, head)
    metrics.update(trainer.fit(classifier, "train"))
    if work.images.pool is None:  # FixMatch's thousands of steps leave settled statistics
        training.recalibrate_batchnorm(features, train.images, cfg.batch_size, seed=cfg.seed)  # the head's too
    _compile(classifier, cfg.learning_rate)
    return classifier, {**metrics, **_evaluate(classifier, work.images)}


def _fit_head(work: Work, features, readout: Readout, history: str = "history.csv"):
    """(the head on the frozen features, what fitting it chose): an exact logistic-regression
    solve when it is linear; else Adam for --epochs, on augmented images through the frozen
    encoder, or on features computed once with --augment none (cheap: no encoder pass per
    epoch). Its epochs go to the run's `history` file."""
    cfg, train, log = work.cfg, work.images.train, work.log
    start = time.perf_counter()
    n_classes = len(train.class_names)
    cached = readout.probes.get(readout.name)  # the readout's features and probe, when "auto" computed them
    f_train = cached[0] if cached else features.predict(train.images, batch_size=256, verbose=0)
    mean, var = heads.standardization(f_train)
    head = models.build_head(f_train.shape[1], n_classes, cfg.classifier.head, cfg.classifier.dropout, mean, var)
    if not cfg.classifier.head:
        weights, bias, c, _ = cached[1] if cached else _probe(f_train, train.labels, n_classes)
        head.get_layer("head_out").set_weights([weights, bias])
        _compile(head, cfg.learning_rate)
        training.build_for(head, (f_train[:2], train.labels[:2]))
        loss, acc = head.evaluate(f_train, train.labels, verbose=0)
        Path(work.keep("head", history).history).write_text(f"epoch,accuracy,loss\n0,{acc:.6f},{loss:.6f}\n")
        log(f"linear head solved (L2 C={c:g}, chosen by cross-validation): train accuracy {acc:.4f}")
        work.pace.add(len(train), time.perf_counter() - start)  # one pass of the images (their features)
        return head, {"probe_c": c}
    if cfg.augment != "none":
        model = augment.training_model(models.build_classifier(features, head), augment.build(cfg.augment))
        _compile(model, cfg.learning_rate)
        fitted = training.fit(model, training.Arrays(train.images, train.labels, cfg.batch_size), cfg.epochs,
                              work.keep("head", history))
    else:
        _compile(head, cfg.learning_rate, steps_per_execution=-(-len(f_train) // cfg.batch_size))
        fitted = training.fit(head, training.Arrays(f_train, train.labels, cfg.batch_size), cfg.epochs,
                              work.keep("head", history, backups=False))  # cheap to redo: no backup
    work.pace.add(len(train) * len(fitted.history.get("loss", [])), time.perf_counter() - start)
    return head, {}


def _evaluate(classifier, images: Images) -> dict:
    """Accuracy and loss on the streamed test split (images that fail to decode are not counted)."""
    test, train = images.test, images.train
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


def _fit_pixels(work: Work):
    """Baseline: multinomial logistic regression on standardized raw pixels, its L2
    strength chosen by cross-validation on the labeled training images only."""
    cfg, train = work.cfg, work.images.train
    start = time.perf_counter()
    x_train = train.images.reshape(len(train), -1)
    mean, var = heads.standardization(x_train)
    n_classes = len(train.class_names)
    weights, bias, *_ = _probe(x_train, train.labels, n_classes)
    work.pace.add(len(train), time.perf_counter() - start)
    head = models.build_head(x_train.shape[1], n_classes, (), 0.0, mean, var)
    head.get_layer("head_out").set_weights([weights, bias])
    inputs = keras.Input(train.images.shape[1:], name="image")
    classifier = keras.Model(inputs, head(keras.layers.Flatten(name="pixels")(inputs)), name="classifier")
    _compile(classifier, cfg.learning_rate)
    Path(work.keep("train").history).write_text("epoch\n0\n")
    return classifier, _evaluate(classifier, work.images)


class SupervisedTrainer:
    """Gradient training of the classifier on the labeled images, with the --augment policy in
    front (in the training model only): the phase "train" at --learning-rate for --epochs, the
    phase "unfreeze" (the top blocks) at --fine-tune-learning-rate for --fine-tune-epochs."""

    def __init__(self, work: Work):
        self.work = work

    def fit(self, classifier, phase: str) -> dict:
        work, cfg, train = self.work, self.work.cfg, self.work.images.train
        rate, epochs = ((cfg.learning_rate, cfg.epochs) if phase == "train"
                        else (cfg.fine_tune_learning_rate, cfg.fine_tune_epochs))
        model = augment.training_model(classifier, augment.build(cfg.augment))
        _compile(model, rate)
        start = time.perf_counter()
        history = training.fit(model, training.Arrays(train.images, train.labels, cfg.batch_size), epochs,
                               work.keep(phase))
        work.pace.add(len(train) * len(history.history.get("loss", [])), time.perf_counter() - start)
        return {}


class FixMatchTrainer:
    """FixMatch (`transfer.semi`) on the labeled images and the unlabeled pool, whichever the
    phase: --steps steps (in epochs of semi.STEPS_PER_EPOCH, each backed up, kept as the phase
    "semi") at --semi-learning-rate (FixMatch's own optimizer and schedule)."""

    def __init__(self, work: Work):
        self.work = work

    def fit(self, classifier, phase: str) -> dict:
        work, cfg, train, pool = self.work, self.work.cfg, self.work.images.train, self.work.images.pool
        fm = cfg.fixmatch
        per_epoch = min(semi.STEPS_PER_EPOCH, fm.steps)
        batch = cfg.batch_size
        ds = semi.batches(stream.ImageSet.of(train), pool, batch, fm.mu, cfg.seed, per_epoch)
        policy = cfg.augment if cfg.augment != "none" else "label-preserving"
        target = None
        if fm.align:  # uniform over the classes that have a label
            target = np.zeros(len(train.class_names), "float32")
            target[np.unique(train.labels)] = 1.0
        model = semi.FixMatch(classifier, augment.build(policy), augment.strong(policy, fm.strong_view),
                              fm.threshold, fm.unlabeled_weight, align=target, teacher=fm.teacher)
        model.compile(optimizer=semi.optimizer(fm.semi_learning_rate, fm.steps))
        model.build(classifier.input.shape)  # built, so that a backup can be restored into it
        model.optimizer.build(classifier.trainable_variables)  # now: slots made in the step's first trace retrace it
        distribute.prepare_model(model, (_example_batch(classifier, labels=True), _example_batch(classifier)))
        epochs = -(-fm.steps // per_epoch)
        work.log(f"semi-supervised (FixMatch): {fm.steps} steps of {batch} labeled (drawn from {len(train)}) + "
                 f"{fm.mu * batch} unlabeled images (from {len(pool)}), threshold {fm.threshold}"
                 + (", pseudo-labels aligned to a uniform class distribution" if fm.align else ""))
        start = time.perf_counter()
        history = training.fit(model, training.Batches(ds, per_epoch), epochs, work.keep("semi"))
        steps_run = per_epoch * len(history.history.get("loss", []))
        work.pace.add(steps_run * batch * (1 + 2 * fm.mu), time.perf_counter() - start)
        report_skipped(pool.failed, work.log, "while streaming the unlabeled pool")
        mask = history.history.get("mask_rate") or [float("nan")]
        return {**dataclasses.asdict(fm), "steps": epochs * per_epoch, "mask_rate": round(float(mask[-1]), 4),
                "n_unlabeled": len(pool), "test_in_unlabeled": work.images.pool_leaked}
