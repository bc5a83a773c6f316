"""Benchmark: fitting a head on a frozen encoder costs what the head costs.

The `vgg` encoder (random weights: the cost does not depend on them), frozen,
with a dense head (128 hidden units) on 1,000 labeled digits. Two ways:

- cached: `transfer fine-tune` computes the encoder features once and fits the head on them;
- recomputed: a plain Keras `model.fit` of encoder + head on the images, the
  encoder frozen, so every epoch runs the encoder again.

Each is timed as a whole process (python start-up, TensorFlow import, data,
fit, evaluation) at 10 and at 200 head epochs, all in one run of this script.

    python benchmarks/head_cost.py [--image-size 32] [--epochs 10,200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

LABELS_PER_CLASS = 100  # x 10 classes = 1,000 labeled images


def worker(mode: str, epochs: int, image_size: int, out_dir: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines import fine_tune
    from transfer.config import FineTuneConfig, make

    cfg = make(FineTuneConfig, data="digits", encoder="random", arch="vgg", freeze="all", unfreeze_top=0,
               head=(128,), labels_per_class=LABELS_PER_CLASS, epochs=epochs, image_size=image_size,
               seed=0, out=os.path.join(out_dir, f"{mode}-{epochs}"),
               results=os.path.join(out_dir, "results.csv"))
    if mode == "cached":
        row = fine_tune.run(cfg, log=lambda m: None)
        return {"test_accuracy": row["test_accuracy"]}
    return recomputed(cfg)


def recomputed(cfg) -> dict:
    """The naive way: the frozen encoder runs inside every training step."""
    from transfer import data, heads, models, stream, training
    from transfer.architectures import preset_blocks

    ds = stream.open_source(cfg.data, True, cfg.image_size)
    pool, test_idx = data.split_test(ds.labels, ds.ids, cfg.test_fraction)
    train = stream.load(ds, data.sample_per_class(ds.labels, pool, cfg.budget.labels_per_class, cfg.seed,
                                                  ds.class_names),
                        cfg.image_size)
    test = stream.load(ds, test_idx, cfg.image_size)
    training.set_seed(cfg.seed)
    encoder = models.build_encoder(train.images.shape[1:], preset_blocks(cfg.arch), cfg.arch)
    models.freeze(encoder)
    features = models.build_features(encoder, cfg.classifier.readout, frozen=True)
    mean, var = heads.standardization(features.predict(train.images, verbose=0))  # same head input as cached
    head = models.build_head(features.output.shape[1], len(ds.class_names), cfg.classifier.head,
                             cfg.classifier.dropout, mean, var)
    classifier = models.build_classifier(features, head)
    classifier.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    classifier.optimizer.learning_rate = cfg.learning_rate
    classifier.fit(train.images, train.labels, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0)
    _, acc = classifier.evaluate(test.images, test.labels, verbose=0)
    return {"test_accuracy": float(acc)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", default="10,200")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "EPOCHS"), help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.image_size, args.out_dir)))
        return

    epochs = [int(e) for e in args.epochs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("cached", "recomputed"):
            for n in epochs:
                start = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", mode, str(n), "--image-size", str(args.image_size),
                     "--out-dir", tmp],
                    capture_output=True, text=True, check=True,
                )
                wall = time.perf_counter() - start
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append((mode, n, wall, result["test_accuracy"]))
                print(f"  {mode:<10} {n:>4} epochs: {wall:6.1f}s  accuracy {result['test_accuracy']:.4f}",
                      file=sys.stderr, flush=True)

    print(f"\nHead fitting on a frozen vgg encoder, {LABELS_PER_CLASS * 10} labeled digits at "
          f"{args.image_size}x{args.image_size}; whole-process wall time\n")
    print("| features   | head epochs | wall s | test accuracy |")
    print("|---|---:|---:|---:|")
    for mode, n, wall, acc in rows:
        print(f"| {mode:<10} | {n:>11} | {wall:6.1f} | {100 * acc:12.1f} |")
    by = {(m, n): (w, a) for m, n, w, a in rows}
    lo, hi = epochs[0], epochs[-1]
    print()
    for mode in ("cached", "recomputed"):
        print(f"{mode}: {hi} epochs / {lo} epochs wall time = {by[(mode, hi)][0] / by[(mode, lo)][0]:.2f}x")
    print(f"recomputed / cached wall time at {hi} epochs = {by[('recomputed', hi)][0] / by[('cached', hi)][0]:.2f}x")
    print(f"accuracy difference at {hi} epochs (cached - recomputed) = "
          f"{100 * (by[('cached', hi)][1] - by[('recomputed', hi)][1]):+.1f} points")


if __name__ == "__main__":
    main()
