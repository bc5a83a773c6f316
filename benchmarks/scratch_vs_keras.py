"""The toolkit's `scratch` baseline against the CNN a user writes in ten lines of Keras.

The plain CNN (conv32-pool-conv64-pool-dense128-dropout, Adam, the same augmentation
layers as `--augment label-preserving`, 150 epochs) and `transfer fine-tune --encoder
random --freeze none` (all defaults) train on the same labeled draws and are tested
on the same images. Prints one row per method and budget: mean and std of test
accuracy over the seeds, and seconds per run.

    python benchmarks/scratch_vs_keras.py --data digits --image-size 16 --budgets 5,10 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from pipelines import fine_tune  # noqa: E402
from transfer import augment, splits, training  # noqa: E402
from transfer.config import FineTuneConfig, make  # noqa: E402


def plain_keras_cnn(shape, classes: int) -> keras.Model:
    """What a user writes: the keras-io MNIST convnet, with augmentation in front."""
    return keras.Sequential([
        keras.Input(shape),
        layers.RandomTranslation(0.1, 0.1, fill_mode="constant"),
        layers.RandomRotation(0.04, fill_mode="constant"),
        layers.RandomZoom(0.1, fill_mode="constant"),
        layers.Conv2D(32, 3, activation="relu", padding="same"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu", padding="same"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5),
        layers.Dense(classes, activation="softmax"),
    ])


def run_plain(cfg: FineTuneConfig, epochs: int) -> tuple[float, float]:
    start = time.perf_counter()
    found = splits.open_labeled(cfg.data, cfg.test_data, cfg.test_fraction, cfg.image_size, cfg.channels, log=lambda m: None)
    train = found.labeled(cfg.budget.labels_per_class, cfg.seed, cfg.image_size, log=lambda m: None)
    training.set_seed(cfg.seed)
    model = plain_keras_cnn(train.images.shape[1:], len(train.class_names))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train.images, train.labels, epochs=epochs, batch_size=32, verbose=0)
    accuracy = model.evaluate(found.test_set(cfg.image_size).batches(256, with_labels=True), verbose=0, return_dict=True)["accuracy"]
    return float(accuracy), time.perf_counter() - start


def run_toolkit(cfg: FineTuneConfig) -> tuple[float, float]:
    row = fine_tune.run(cfg, log=lambda m: None)
    return float(row["test_accuracy"]), float(row["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--budgets", default="5,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--plain-epochs", type=int, default=150)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    scores: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            for seed in seeds:
                cfg = make(FineTuneConfig, data=args.data, image_size=args.image_size, encoder="random", freeze="none",
                           labels_per_class=budget, seed=seed, out=f"{tmp}/s{budget}-{seed}",
                           results=f"{tmp}/r.csv")
                for method, fn in (("plain Keras CNN", lambda: run_plain(cfg, args.plain_epochs)),
                                   ("transfer scratch", lambda: run_toolkit(cfg))):
                    keras.backend.clear_session()
                    scores.setdefault((method, budget), []).append(fn())
    print(f"{args.data}, {args.image_size}px, seeds {args.seeds}; default augmentation "
          f"({augment.build('label-preserving').name}) on both")
    print(f"{'method':<18} {'labels/class':>12} {'accuracy mean':>14} {'std':>6} {'s/run':>6}")
    for (method, budget), values in scores.items():
        acc = np.array([a for a, _ in values]) * 100
        secs = np.mean([s for _, s in values])
        print(f"{method:<18} {budget:>12} {acc.mean():>14.1f} {acc.std(ddof=1) if len(acc) > 1 else 0:>6.1f} "
              f"{secs:>6.1f}")


if __name__ == "__main__":
    main()
