"""Benchmark: how many classes each selection covers at small total budgets, and how well its
labels alone label the pool, on a labeled pool (the built-ins: the pool is the data without
its test split, as fine-tune leaves it), with raw pixels and with a pretrained encoder's
features, over seeds (the k-means seed; random's draw).

At 1-2 labels per class, the classes a choice covers cap every learner trained on it: a
class with no label is never predicted. Coverage is not the whole of it: a choice can cover
every class with atypical images. The second measure is 1-NN label propagation: each pool
image takes the label of its nearest chosen image (cosine, the same features), and the
share of the pool labeled right is what the choice tells a learner about the rest (as
TypiClust's authors' self-supervised 1-NN evaluation). These are the cheap, label-side
measures of a selection (no training; the pool's labels are read only to score, never to
choose).

    python benchmarks/selection_coverage.py --data digits --encoder runs/digits/pretrain-contrastive \
        --image-size 16 [--budgets 10,20] [--strategies typiclust,probcover,kcenter] [--seeds 5] \
        [--readouts avg,projector]

Prints a markdown table: features, budget, strategy, classes covered (mean, min-max over
seeds), 1-NN propagation accuracy on the pool (mean ± std over seeds, %), seconds per
selection.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transfer import budget, evaluation, features, selection, splits, stream  # noqa: E402


def pool_features(data: str, encoder: str, image_size: int,
                  readout: str = "avg") -> tuple[np.ndarray, np.ndarray, str]:
    """(features of every pool image, their labels, the features' name)."""
    net, size, channels, name, _ = budget.feature_model(encoder, readout)
    size = size or image_size
    name = name if net is None else f"{name} ({readout})"
    source, pool = splits.open_pool(data, True, size, channels, lambda m: None)
    f, y, _ = features.compute(net, stream.ImageSet(source, pool, size))
    return f, y, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--encoder", required=True, help="a pretrain run directory (pixels are measured beside it)")
    parser.add_argument("--image-size", type=int, default=16, help="for the pixels")
    parser.add_argument("--budgets", default="10,20")
    parser.add_argument("--strategies", default=",".join(selection.STRATEGIES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--readouts", default="avg,projector", help="the encoder's readouts to measure")
    args = parser.parse_args()
    print(f"classes covered on {args.data}'s pool, {args.seeds} seeds\n")
    print("| features | budget | strategy | classes covered | min-max | 1-NN on the pool | seconds |")
    print("|---|---|---|---|---|---|---|")
    for encoder, readout in [("pixels", "avg")] + [(args.encoder, r) for r in args.readouts.split(",")]:
        f, y, name = pool_features(args.data, encoder, args.image_size, readout)
        for b in (int(b) for b in args.budgets.split(",")):
            for strategy in args.strategies.split(","):
                t, choices = time.perf_counter(), []
                for seed in range(args.seeds):
                    choices.append(selection.select(strategy, f, b, (), seed))
                seconds = (time.perf_counter() - t) / args.seeds
                covered = [len(set(y[chosen])) for chosen in choices]
                right = [100 * evaluation.nearest_accuracy(f[chosen], y[chosen], f, y) for chosen in choices]
                print(f"| {name} | {b} | {strategy} | {np.mean(covered):.1f} | {min(covered)}-{max(covered)} | "
                      f"{np.mean(right):.1f} ± {np.std(right):.1f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
