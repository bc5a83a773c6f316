"""`transfer fine-tune`: open the encoder and the data, draw or choose the labels, fine-tune
(`transfer.finetuning`, the recipe itself), save the classifier run directory, log one row."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common import Run, encoder_blocks, report_skipped
from transfer import (artifacts, backbones, budget, finetuning, layers, lists, methods, mistakes, models, results,
                      selection, splits, stream, training)
from transfer.config import FineTuneConfig
from transfer.errors import TransferError
from transfer.objectives import TWO_VIEW

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
    projector = run.projector() if cfg.classifier.readout in ("auto", "projector") else None
    if cfg.classifier.readout == "projector" and projector is None:
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
    if cfg.budget.labels is None:
        train = found.labeled(cfg.budget.labels_per_class, cfg.seed, image_size, run.log)
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
    how = cfg.budget.selection or "random"
    net, name = None, None
    if how in selection.BY_FEATURES:
        name = _select_encoder(cfg)
        net, size, _, _, readout = budget.feature_model(name, cfg.budget.select_readout or "auto")
        if size is not None and size != image_size:
            raise TransferError(f"--select-encoder {name} takes {size}x{size} images; this fine-tune uses "
                                f"{image_size}x{image_size}")
        run.note(select_readout=readout)
        name += f" ({readout})" if readout else ""
    chosen = budget.choose(how, found.source, found.pool, cfg.budget.labels, cfg.seed, net, image_size,
                           cfg.budget.purity)
    present = len(np.unique(found.source.labels[chosen]))
    run.log(f"{cfg.budget.labels} labels in all, chosen by {how}" + (f" on {name}" if name else "")
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
            done = finetuning.fine_tune(_resolve_epochs(cfg, len(train), run),
                                        finetuning.Images(train, test, pool, leaked_pool), run.keep, log, encoder,
                                        pretrained=start.objective is not None, projector=start.projector)
            classifier, metrics = done.classifier, done.metrics
        if run.worker_done(f" (test accuracy {metrics['test_accuracy']:.4f})"):
            return {}
        metrics.update(_write_reports(run.staging, classifier, train, test))
        trained = encoder is not None
        out = run.save(classifier, "classifier", image_size, channels, class_names=train.class_names,
                       **_started_from(cfg, start, objective, channels),
                       method=method, freeze=cfg.freeze, readout=done.readout.name if trained else "avg",
                       metrics=metrics,
                       data={"source": cfg.data, "fingerprint": source.fingerprint()})
    row = run.record(
        test_data=cfg.test_data, objective=objective or "random", weights=backbones.origin(cfg.weights),
        arch=manifest["arch"]["preset"] if manifest else (start.backbone or cfg.arch) if trained else None,
        image_size=image_size, channels=channels, freeze=cfg.freeze if trained else None,
        readout=done.readout.name if trained else None, readout_choice=done.readout.choice if trained else None,
        adapt_bn=cfg.classifier.adapt_bn if trained else None,
        head=(",".join(map(str, cfg.classifier.head)) or "linear") if trained else None,
        unfreeze_top=cfg.unfreeze_top if trained and cfg.freeze == "all" else None,
        augment=cfg.augment if trained and (cfg.classifier.head or cfg.freeze == "none" or cfg.unfreeze_top
                                            or cfg.unlabeled)
        else "none", unlabeled=cfg.unlabeled,
        n_train=len(train), batch_size=cfg.batch_size, test_in_pretraining=leaked, **_budget_fields(cfg, train),
        **_skipped_counts(source, test.listing, pool), **metrics, **done.pace.row())
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
    if cfg.budget.labels is None:
        return {"labels_per_class": cfg.budget.labels_per_class or "all"}
    how = cfg.budget.selection or "random"
    fields = {"labels_per_class": None, "labels": cfg.budget.labels, "selection": how,
              "purity": cfg.budget.purity if how == "probcover" else None}
    if how in selection.BY_FEATURES:
        fields["select_features"], fields["select_features_readout"] = _features(
            _select_encoder(cfg), cfg.budget.select_readout, pending)
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
    return cfg.budget.select_encoder or (cfg.encoder if pretrained_run else "pixels")


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
    return {**label_budget(cfg), "select_encoder": cfg.budget.select_encoder,
            "labeled_classes": len(np.unique(train.labels))}


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
    passes = cfg.fixmatch.steps * cfg.fixmatch.mu * cfg.batch_size / max(len(source), 1)
    decoded, index = stream.decode_once(source, np.arange(len(source)), image_size, passes, log)
    return stream.ImageSet(run.temporary(decoded), index, image_size), leaked
