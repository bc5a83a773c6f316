"""Benchmark: what `--tensorboard` adds to a pretraining (the target: at most 5%).

Pretrains the default objective on the built-in digits (16x16) for 20 epochs, with and
without `--tensorboard DIR`, alternating, each in a fresh process, and prints the median
training seconds (the row's `train_seconds`: the fit itself, TensorBoard's per-epoch writes
included) and whole-command wall seconds (start-up, the preview image and the HParams
record included) of each, and their ratios.

    python benchmarks/tensorboard_cost.py [--epochs 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pandas as pd


def pretrain(out: str, epochs: int, board: str | None) -> tuple[float, float]:
    """(train seconds, wall seconds) of one pretraining in a fresh process."""
    results = out + ".csv"
    args = ["pretrain", "--data", "digits", "--image-size", "16", "--out", out, "--epochs", str(epochs),
            "--results", results, *(["--tensorboard", board] if board else [])]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wall = time.perf_counter() - start
    return float(pd.read_csv(results).iloc[-1]["train_seconds"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for board in (False, True):
                out = os.path.join(tmp, f"run-{r}-{int(board)}")
                times[board].append(pretrain(out, args.epochs, os.path.join(tmp, "tb") if board else None))
    med = {b: (statistics.median(t for t, _ in v), statistics.median(w for _, w in v)) for b, v in times.items()}
    print("| pretraining (digits 16x16, 20 epochs) | train s (median) | wall s (median) | runs (train s) |")
    print("|---|---:|---:|---|")
    for board, label in ((False, "without --tensorboard"), (True, "with --tensorboard")):
        print(f"| {label} | {med[board][0]:.1f} | {med[board][1]:.1f} | "
              f"{', '.join(f'{t:.1f}' for t, _ in times[board])} |")
    print(f"\nRatio with / without: train {med[True][0] / med[False][0]:.3f}, wall {med[True][1] / med[False][1]:.3f}")


if __name__ == "__main__":
    main()
