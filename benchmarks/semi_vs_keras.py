"""Benchmark: the toolkit's FixMatch (`scratch-semi`) against FixMatch written the reference way
in plain Keras, on the same draws, the same architecture, steps, batch and augmentations.

The plain Keras FixMatch (Sohn et al. 2020, as the authors' code does it): each step puts
the labeled images (weak view), the unlabeled images' weak views and their strong views
through the network together, in training mode, as logits; the pseudo-label is the
weak view's argmax when its softmax reaches the threshold (no gradient); loss =
CE(labeled) + lambda * mean(mask * CE(strong, pseudo-label)); SGD with Nesterov momentum 0.9,
learning rate 0.03 with FixMatch's cosine decay (cos(7 pi k / 16 K)), weight decay 5e-4,
and the weights' exponential moving average evaluated at the end, as FixMatch does (0.99 here:
see `transfer.semi.EMA`).
The network is the toolkit's `small` encoder with a linear softmax head over its average-pooled
features; the weak and strong views are the toolkit's (`transfer.augment`).

A third learner, `simple Keras FixMatch`, is FixMatch as a Keras user writes it plainly (the
form that beat the toolkit's on a texture-rich set, issue #46): a 2-block conv net (32 and 64
filters, BatchNorm, max pooling), Flatten, Dense 128, dropout 0.5, logits; Adam 1e-3 with a
cosine decay to 5% over the steps; weak view a random translation up to 10%; strong view a
random affine (shift 20%, rotation 25 degrees, zoom 20%), contrast x0.5-1.5 around the image's
mean, brightness +-0.3 and one cutout of 4-12 px; no weight average, no distribution alignment.

A fourth, `scratch`, is the toolkit's supervised augmented scratch (`fine-tune --encoder random
--freeze none`, no pool) with the same `--readout` and `--head`: the baseline FixMatch must beat.

`--readout`, `--head`, `--weak`, `--strong`, `--threshold` and `--weight` are levers of the
toolkit's learners (#46): the readout and a hidden head (fine-tune's options), FixMatch's weak view
(a shift alone, as published, instead of the augmentation policy), its strong view (without its
contrast and brightness changes: fine-tune --strong-view geometry; or without its cutout), its
confidence threshold and the unlabeled loss's weight (0: FixMatch's optimizer, views and schedule
with the labeled loss alone, which tells the pseudo-labels' share from the training's).

All learn from the same labeled draw (`labels_per_class` of every class, the toolkit's
draw for that seed), the FixMatch learners from the whole pool (the images outside the test
split) as unlabeled too; all are scored on the pool's labels (never the test split), and on the
test split for reference. One fresh process per run.

    python benchmarks/semi_vs_keras.py [--data digits] [--labels-per-class 10] [--seeds 0,1,2] [--steps 2000]
        [--only scratch-semi] [--teacher batch|inference] [--no-align] [--readout flatten] [--head 128]
        [--weak translate] [--strong geometry|no-cutout] [--threshold 0.8] [--weight 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_SIZE = {"digits": 16, "animals": 28, "patches": 28, "fills": 28, "textures": 32, "faces": 25}  # the labeled built-ins
LEARNERS = ("scratch-semi", "plain Keras FixMatch", "simple Keras FixMatch", "scratch")


def _splits(data: str, per_class: int, seed: int):
    from transfer import splits

    found = splits.open_labeled(data, None, 0.2, IMAGE_SIZE[data], None, log=lambda m: None)
    return found, found.labeled(per_class, seed, IMAGE_SIZE[data], log=lambda m: None)


def _accuracy(predict, source, index, size) -> float:
    import numpy as np

    from transfer import stream

    hits = total = 0
    for _, images, labels in stream.records(source, index, size).batch(512).as_numpy_iterator():
        hits += int((np.argmax(predict(images), axis=1) == labels).sum())
        total += len(labels)
    return hits / max(total, 1)


def toolkit(data: str, per_class: int, seed: int, steps: int, out: str, teacher: str = "batch",
            align: bool = True, readout: str = "auto", head: tuple[int, ...] = (), weak: str = "policy",
            semi: bool = True, strong: str = "policy", threshold: float = 0.95, weight: float = 1.0) -> dict:
    import keras
    from keras import layers

    from pipelines import fine_tune
    from transfer import artifacts, augment
    from transfer import semi as fixmatch
    from transfer.config import FineTuneConfig, make

    if weak == "translate":  # FixMatch's published weak view: a shift up to 12.5% (reflected), no intensity change
        class TranslateWeak(fixmatch.FixMatch):
            def __init__(self, classifier, weak_view, strong_view, *args, **kwargs):
                shift = layers.RandomTranslation(0.125, 0.125, fill_mode="reflect")
                super().__init__(classifier, shift, strong_view, *args, **kwargs)

        fixmatch.FixMatch = TranslateWeak  # this worker process runs one fine-tune
    if strong == "no-cutout":  # the strong view without its cutout
        full = augment.strong

        def without_cutout(policy, view="full", name="strong_augment"):
            kept = [lay for lay in full(policy, view, name).layers if not isinstance(lay, layers.RandomErasing)]
            return keras.Sequential(kept, name=name)

        augment.strong = without_cutout
    cfg = make(FineTuneConfig, data=data, encoder="random", freeze="none", labels_per_class=per_class, seed=seed,
               unlabeled=data if semi else None, steps=steps, image_size=IMAGE_SIZE[data], out=out,
               results=out + ".csv", teacher=teacher, align=align, readout=readout, head=head, threshold=threshold,
               unlabeled_weight=weight, strong_view="geometry" if strong == "geometry" else "full")
    start = time.perf_counter()
    row = fine_tune.run(cfg, log=lambda m: None)
    seconds = time.perf_counter() - start
    model, _ = artifacts.load_model_run(out, "classifier")
    found, _ = _splits(data, per_class, seed)
    predict = lambda x: model.predict_on_batch(x)  # noqa: E731
    return {"pool": _accuracy(predict, found.source, found.pool, IMAGE_SIZE[data]),
            "test": float(row["test_accuracy"]), "seconds": seconds,
            "mask_rate": row.get("mask_rate") if semi else None}


def _fixmatch(net, weak, strong, threshold: float, weight: float):
    """FixMatch's training step around `net` (images -> logits), as the authors' code does it: the
    labeled images' weak views, the unlabeled images' weak and strong views through the network
    together in training mode; the pseudo-label is the weak view's argmax where its softmax reaches
    the threshold (no gradient); loss = CE(labeled) + weight * mean(mask * CE(strong, pseudo-label))."""
    import keras
    import tensorflow as tf
    from keras import ops

    class FixMatch(keras.Model):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def call(self, x, training=False):
            return self.net(x, training=training)

        def train_step(self, batch_data):
            (x_l, y_l), x_u = batch_data
            n_l, n_u = ops.shape(x_l)[0], ops.shape(x_u)[0]
            with tf.GradientTape() as tape:
                logits = self.net(ops.concatenate([weak(x_l), weak(x_u), strong(x_u)], axis=0), training=True)
                logits_l, logits_w, logits_s = logits[:n_l], logits[n_l:n_l + n_u], logits[n_l + n_u:]
                probs = ops.stop_gradient(ops.softmax(logits_w))
                mask = ops.cast(ops.max(probs, axis=1) >= threshold, "float32")
                labeled = ops.mean(keras.losses.sparse_categorical_crossentropy(y_l, logits_l, from_logits=True))
                unlabeled = ops.mean(mask * keras.losses.sparse_categorical_crossentropy(
                    ops.argmax(probs, axis=1), logits_s, from_logits=True))
                loss = labeled + weight * unlabeled
            variables = self.net.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return {"loss": loss, "mask_rate": ops.mean(mask)}

    return FixMatch(net)


def _fit_and_score(model, found, train, size: int, seed: int, steps: int, batch: int, mu: int) -> dict:
    """Train a compiled `_fixmatch` model with the reference's samplers (`batch` labeled images a
    step however few are labeled, they repeat; mu times as many unlabeled), then score its network."""
    import numpy as np
    import tensorflow as tf

    from transfer import stream

    labeled = stream.dataset(train, np.arange(len(train)), size, batch_size=batch, shuffle=True,
                             seed=seed, with_labels=True, forever=True)
    pool = stream.dataset(found.source, found.pool, size, batch_size=mu * batch, shuffle=True,
                          seed=seed + 1, forever=True)
    start = time.perf_counter()
    history = model.fit(tf.data.Dataset.zip((labeled, pool)), epochs=steps // 100, steps_per_epoch=100, verbose=0)
    seconds = time.perf_counter() - start
    predict = lambda x: np.asarray(model.net(x, training=False))  # noqa: E731
    return {"pool": _accuracy(predict, found.source, found.pool, size),
            "test": _accuracy(predict, found.test_source, found.test_index, size), "seconds": seconds,
            "mask_rate": float(history.history["mask_rate"][-1])}


def plain_keras(data: str, per_class: int, seed: int, steps: int, batch: int = 32, mu: int = 7,
                threshold: float = 0.95, weight: float = 1.0) -> dict:
    import keras
    from keras import layers, ops

    from transfer import augment, models, semi, training
    from transfer.architectures import preset_blocks

    size = IMAGE_SIZE[data]
    found, train = _splits(data, per_class, seed)
    training.set_seed(seed)
    n_classes = len(found.source.class_names)
    encoder = models.build_encoder((size, size, train.images.shape[-1]), preset_blocks("small"))
    inputs = keras.Input(encoder.input.shape[1:])
    logits_model = keras.Model(inputs, layers.Dense(n_classes)(layers.GlobalAveragePooling2D()(encoder(inputs))))
    weak, strong = augment.build("label-preserving"), augment.strong("label-preserving")

    def fixmatch_lr(step):  # FixMatch's cosine decay: lr * cos(7 pi k / (16 K))
        return 0.03 * ops.cos(7.0 * math.pi * ops.cast(step, "float32") / (16.0 * steps))

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return fixmatch_lr(step)

    model = _fixmatch(logits_model, lambda x: weak(x, training=True), lambda x: strong(x, training=True),
                      threshold, weight)
    model.compile(optimizer=keras.optimizers.SGD(Schedule(), momentum=0.9, nesterov=True, weight_decay=5e-4,
                                                 use_ema=True, ema_momentum=semi.EMA))
    return _fit_and_score(model, found, train, size, seed, steps, batch, mu)  # fit ends with the EMA weights (use_ema)


def simple_keras(data: str, per_class: int, seed: int, steps: int, batch: int = 32, mu: int = 7,
                 threshold: float = 0.95) -> dict:
    """FixMatch as the module's docstring describes its `simple Keras FixMatch`."""
    import keras
    import tensorflow as tf
    from keras import layers, ops

    from transfer import training

    size = IMAGE_SIZE[data]
    found, train = _splits(data, per_class, seed)
    training.set_seed(seed)
    n_classes, channels = len(found.source.class_names), train.images.shape[-1]
    inputs = keras.Input((size, size, channels))
    x = inputs
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(layers.Flatten()(x)))
    net = keras.Model(inputs, layers.Dense(n_classes)(x))
    weak = keras.Sequential([layers.RandomTranslation(0.1, 0.1, fill_mode="reflect")])
    affine = keras.Sequential([layers.RandomTranslation(0.2, 0.2, fill_mode="reflect"),
                               layers.RandomRotation(25 / 360, fill_mode="reflect"),
                               layers.RandomZoom(0.2, fill_mode="reflect")])

    def strong(images):
        images = affine(images, training=True)
        n = ops.shape(images)[0]
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        images = (images - mean) * tf.random.uniform((n, 1, 1, 1), 0.5, 1.5) + mean
        images = ops.clip(images + tf.random.uniform((n, 1, 1, 1), -0.3, 0.3), 0.0, 1.0)
        side = tf.random.uniform((n, 1, 1, 1), 4, 13, dtype="int32")
        cy = tf.random.uniform((n, 1, 1, 1), 0, size, dtype="int32")
        cx = tf.random.uniform((n, 1, 1, 1), 0, size, dtype="int32")
        yy = tf.reshape(tf.range(size), (1, size, 1, 1))
        xx = tf.reshape(tf.range(size), (1, 1, size, 1))
        hole = (tf.abs(yy - cy) * 2 < side) & (tf.abs(xx - cx) * 2 < side)
        return tf.where(hole, tf.zeros_like(images), images)

    model = _fixmatch(net, lambda x: weak(x, training=True), strong, threshold, 1.0)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.05)))
    return _fit_and_score(model, found, train, size, seed, steps, batch, mu)


def _mean_mask(got: list[dict]) -> str:
    """The runs' mean final mask rate; "-" for a supervised learner (it has none)."""
    rates = [float(g["mask_rate"]) for g in got if g.get("mask_rate") is not None]
    return f"{statistics.mean(rates):.2f}" if rates else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", choices=sorted(IMAGE_SIZE))
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--only", help="the learners to run, comma-separated (default all): " + ", ".join(LEARNERS))
    parser.add_argument("--teacher", default="batch", choices=["inference", "batch"],
                        help="scratch-semi's FixMatch teacher (fine-tune --teacher)")
    parser.add_argument("--align", action=argparse.BooleanOptionalAction, default=True,
                        help="scratch-semi with distribution alignment or not (fine-tune --align, the default)")
    parser.add_argument("--readout", default="auto", help="scratch-semi's and scratch's readout (fine-tune --readout)")
    parser.add_argument("--head", default="", help="scratch-semi's and scratch's hidden head units, e.g. 128 "
                        "(fine-tune --head; default linear)")
    parser.add_argument("--weak", default="policy", choices=["policy", "translate"],
                        help="scratch-semi's weak view: the --augment policy (the toolkit's) or a shift alone "
                        "(FixMatch's published weak view, without flips)")
    parser.add_argument("--strong", default="policy", choices=["policy", "geometry", "no-cutout"],
                        help="scratch-semi's strong view: the toolkit's default, or without its contrast and "
                        "brightness changes (fine-tune --strong-view geometry), or without its cutout")
    parser.add_argument("--threshold", type=float, default=0.95,
                        help="scratch-semi's threshold (fine-tune --threshold)")
    parser.add_argument("--weight", type=float, default=1.0,
                        help="scratch-semi's unlabeled loss weight (fine-tune --unlabeled-weight; 0: the labeled "
                        "loss alone)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        which, seed, out = json.loads(args.worker)
        head = tuple(int(u) for u in args.head.split(",") if u)
        got = (toolkit(args.data, args.labels_per_class, seed, args.steps, out, args.teacher, args.align,
                       args.readout, head, args.weak, semi=which == "scratch-semi", strong=args.strong,
                       threshold=args.threshold, weight=args.weight)
               if which in ("scratch-semi", "scratch") else
               plain_keras(args.data, args.labels_per_class, seed, args.steps) if which == "plain Keras FixMatch"
               else simple_keras(args.data, args.labels_per_class, seed, args.steps))
        print("RESULT " + json.dumps(got), flush=True)
        os._exit(0)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {name: [] for name in LEARNERS if args.only is None or name in args.only.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for which in runs:
                out = os.path.join(tmp, f"{which.replace(' ', '-')}-{seed}")
                proc = subprocess.run([sys.executable, __file__, "--data", args.data, "--labels-per-class",
                                       str(args.labels_per_class), "--steps", str(args.steps),
                                       "--teacher", args.teacher, "--align" if args.align else "--no-align",
                                       "--readout", args.readout, "--head", args.head, "--weak", args.weak,
                                       "--strong", args.strong, "--threshold", str(args.threshold),
                                       "--weight", str(args.weight), "--worker",
                                       json.dumps([which, seed, out])], capture_output=True, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if not found:
                    raise SystemExit(f"{which} seed {seed} failed: {proc.stderr.strip().splitlines()[-3:]}")
                runs[which].append(json.loads(found[0][7:]))
    print(f"{args.data}, {args.labels_per_class} labels/class, {args.steps} steps, seeds {seeds}, "
          f"scratch-semi --teacher {args.teacher} {'--align' if args.align else '--no-align'} "
          f"--readout {args.readout} --head {args.head or 'linear'} --weak {args.weak} --strong {args.strong} "
          f"--threshold {args.threshold} --weight {args.weight}\n")
    print("| learner | pool accuracy % (mean ± std) | per seed | test % | per seed | final mask rate | s/run |")
    print("|---|---:|---|---:|---|---:|---:|")
    for which, got in runs.items():
        pool, test = [100 * g["pool"] for g in got], [100 * g["test"] for g in got]
        print(f"| {which} | {statistics.mean(pool):.1f} ± {statistics.pstdev(pool):.1f} | "
              f"{', '.join(f'{p:.1f}' for p in pool)} | {statistics.mean(test):.1f} | "
              f"{', '.join(f'{t:.1f}' for t in test)} | "
              f"{_mean_mask(got)} | "
              f"{statistics.mean(g['seconds'] for g in got):.0f} |")
    for other in LEARNERS[1:3]:  # the plain Keras forms, which the target is about
        if "scratch-semi" in runs and other in runs:
            diff = [100 * (a["pool"] - b["pool"]) for a, b in zip(runs["scratch-semi"], runs[other])]
            print(f"\nscratch-semi - {other}, paired over seeds: {statistics.mean(diff):+.1f} points "
                  f"(target: >= -0.5)")


if __name__ == "__main__":
    main()
