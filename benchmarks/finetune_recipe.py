"""Benchmark: supervised fine-tuning recipes from a pretrained encoder against augmented scratch,
at few labels per class, scored on the pool's labels outside each draw (never the test split).

One encoder (`--encoder RUN`, or pretrained here with the defaults on the data set's images
outside its test split, and kept with `--keep DIR`) serves every run. Each setting is
FineTuneConfig fields over the defaults (`scratch`: the augmented scratch baseline, always run),
or `plain-keras`: the same encoder file fine-tuned as a Keras user would write it (augmentation
layers, the encoder, global average pooling, a randomly initialized softmax layer, Adam 1e-3,
the same number of steps as the toolkit's default; no probe first, no BatchNorm re-estimation);
every setting learns from the same draws (`labels_per_class` of every class, the toolkit's draw
for that seed) and is scored on the pool images outside the draw. The table gives the mean and
spread over seeds and the paired difference from scratch with its 95% interval (t over seeds).

    python benchmarks/finetune_recipe.py [--data animals] [--labels-per-class 2,4] [--seeds 0,1,2,3,4]
        [--settings defaults,lr-3e-4,fixmatch,scratch-semi,...] [--encoder RUN | --keep DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

IMAGE_SIZE = {"digits": 16, "animals": 28, "fills": 28, "patches": 28}
SETTINGS = {  # name: FineTuneConfig fields over the defaults (the pretrained encoder's unless said)
    "scratch": {"encoder": "random"},
    "defaults": {},
    "lr-3e-4": {"learning_rate": 3e-4},
    "lr-1e-4": {"learning_rate": 1e-4},
    "epochs-30": {"epochs": 30},
    "epochs-300": {"epochs": 300},
    "lr-3e-4-epochs-300": {"learning_rate": 3e-4, "epochs": 300},
    "readout-avg": {"readout": "avg"},
    "readout-projector": {"readout": "projector"},  # through the pretrained projection head (SimCLRv2)
    "top1": {"freeze": "all", "unfreeze_top": 1},
    "frozen": {"freeze": "all", "unfreeze_top": 0},  # the linear probe on the frozen readout, nothing else
    "plain-keras": None,  # see plain_keras
    "lr-3e-3": {"learning_rate": 3e-3},
    "scratch-lr-3e-3": {"encoder": "random", "learning_rate": 3e-3},
    "scratch-epochs-300": {"encoder": "random", "epochs": 300},
    "fixmatch": {"unlabeled": "DATA"},  # FixMatch from the encoder on the data set's pool (`--unlabeled`)
    "scratch-semi": {"encoder": "random", "unlabeled": "DATA"},  # FixMatch from random weights
}


def fields(name: str, data: str, steps: int | None) -> dict:
    """A setting's FineTuneConfig fields, its pool named (`DATA`) and FixMatch's steps (--steps) set."""
    got = {k: data if v == "DATA" else v for k, v in SETTINGS[name].items()}
    return {**got, **({"steps": steps} if steps and "unlabeled" in got else {})}


def pool_accuracy(model, found, rest: np.ndarray, size: int) -> float:
    from transfer import features, stream

    probs, labels, _ = features.compute(model, stream.ImageSet(found.source, rest, size))
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def load_classifier(run_dir: str):
    from transfer import artifacts

    with warnings.catch_warnings():  # the saved classifier's optimizer is not needed to predict
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return artifacts.load_model_run(run_dir, "classifier")[0]


def plain_keras(encoder_dir: str, found, chosen: np.ndarray, seed: int, size: int):
    """The encoder fine-tuned on the images at `chosen` the way the keras-io transfer-learning
    guide does it, for the toolkit's default number of steps."""
    import keras
    from keras import layers

    from pipelines import fine_tune
    from transfer import artifacts, training

    train = found.at(chosen, size, log=lambda m: None)
    training.set_seed(seed)
    encoder, _ = artifacts.load_model_run(encoder_dir, "encoder")
    inputs = keras.Input(train.images.shape[1:])
    x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant")(inputs)
    x = layers.RandomRotation(0.04, fill_mode="constant")(x)
    x = layers.RandomZoom(0.1, fill_mode="constant")(x)
    x = layers.GlobalAveragePooling2D()(encoder(x))
    model = keras.Model(inputs, layers.Dense(len(train.class_names), activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(train.images, train.labels, epochs=fine_tune.default_epochs(len(train), 32), batch_size=32, verbose=0)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="animals", choices=sorted(IMAGE_SIZE))
    parser.add_argument("--labels-per-class", default="2,4")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--settings", default="defaults")
    parser.add_argument("--encoder", help="a pretrain run to fine-tune (default: pretrain one here)")
    parser.add_argument("--keep", help="where to keep the encoder pretrained here")
    parser.add_argument("--steps", type=int, help="FixMatch's steps in the fixmatch and scratch-semi settings "
                        "(default: fine-tune's)")
    args = parser.parse_args()

    import keras

    from pipelines import fine_tune, pretrain
    from transfer import data, splits
    from transfer.config import FineTuneConfig, PretrainConfig, make

    size = IMAGE_SIZE[args.data]
    names = ["scratch", *(s for s in args.settings.split(",") if s != "scratch")]
    budgets = [int(b) for b in args.labels_per_class.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        encoder, pretrain_s = args.encoder, None
        if encoder is None:
            encoder = args.keep or os.path.join(tmp, "encoder")
            start = time.perf_counter()
            pretrain.run(PretrainConfig(data=args.data, out=encoder, image_size=size,
                                        results=os.path.join(tmp, "pretrain.csv")), log=lambda m: None)
            pretrain_s = time.perf_counter() - start
        found = splits.open_labeled(args.data, None, 0.2, size, None, log=lambda m: None)
        got = {(name, b): [] for name in names for b in budgets}
        seconds = {name: [] for name in names}
        for b in budgets:
            for seed in seeds:
                chosen = data.sample_per_class(found.source.labels, found.pool, b, seed, found.source.class_names)
                rest = np.setdiff1d(found.pool, chosen)
                for name in names:
                    keras.backend.clear_session()
                    out = os.path.join(tmp, f"{name}-{b}-{seed}")
                    start = time.perf_counter()
                    if name == "plain-keras":
                        model = plain_keras(encoder, found, chosen, seed, size)
                    else:
                        fine_tune.run(make(FineTuneConfig, data=args.data, labels_per_class=b, seed=seed,
                                           image_size=size, out=out, results=os.path.join(tmp, "r.csv"),
                                           **{"encoder": encoder, **fields(name, args.data, args.steps)}),
                                      log=lambda m: None)
                        model = load_classifier(out)
                    seconds[name].append(time.perf_counter() - start)
                    got[(name, b)].append(100 * pool_accuracy(model, found, rest, size))
                    print(f"  {name} {b}/class seed {seed}: {got[(name, b)][-1]:.1f}", flush=True)
    from transfer import stats

    print(f"\n{args.data}, pool accuracy outside each draw (never the test split), seeds {seeds}"
          + (f"; encoder pretrained here in {pretrain_s:.0f} s" if pretrain_s else f"; encoder {encoder}") + "\n")
    print("| setting | labels/class | pool accuracy % | per seed | vs scratch [95% CI] | s/run |")
    print("|---|---:|---:|---|---:|---:|")
    for b in budgets:
        for name in names:
            acc = got[(name, b)]
            d = stats.difference(pd.Series(acc), pd.Series(got[("scratch", b)]))
            vs = "" if name == "scratch" else f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
            print(f"| {name} | {b} | {statistics.mean(acc):.1f} ± {statistics.pstdev(acc):.1f} | "
                  f"{', '.join(f'{a:.1f}' for a in acc)} | {vs} | {statistics.mean(seconds[name]):.1f} |")


if __name__ == "__main__":
    main()
