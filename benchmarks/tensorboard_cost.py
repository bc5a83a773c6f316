"""Benchmark: what `--tensorboard` adds to a pretraining (the target: at most 5%).

Pretrains the default objective on the built-in digits (16x16) for 20 epochs and prints
two measurements side by side:

1. **Inside the fit** (one process, `--repeats` runs with `--tensorboard`): the seconds
   spent in the TensorBoard callback's own hooks during the real fit (every hook Keras's
   callback overrides, timed where Keras calls it: callbacks run in the training loop),
   and the image summary and HParams record written after it, as a share of the rest of
   the training time. Immune to the machine's noise: it times only what TensorBoard does.
2. **End to end**: the same pretraining with and without `--tensorboard`, alternating,
   each in a fresh process; the median of the row's `train_seconds` (the fit itself) and
   of the whole command's wall seconds, and their ratios. On a shared machine this spread
   can exceed the effect; the run times are printed so that can be seen.

    python benchmarks/tensorboard_cost.py [--epochs 20] [--repeats 3] [--no-end-to-end]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cli import main as cli_main  # noqa: E402
from transfer import board  # noqa: E402


def _args(out: str, epochs: int, tb: str | None) -> list[str]:
    return ["pretrain", "--data", "digits", "--image-size", "16", "--out", out, "--epochs", str(epochs),
            "--results", out + ".csv", *(["--tensorboard", tb] if tb else [])]


def pretrain_process(out: str, epochs: int, tb: str | None) -> tuple[float, float]:
    """(train seconds, wall seconds) of one pretraining in a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from cli import main; main()", *_args(out, epochs, tb)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - start
    return float(pd.read_csv(out + ".csv").iloc[-1]["train_seconds"]), wall


class Spent:
    """Seconds spent in timed calls."""

    def __init__(self):
        self.fit = 0.0  # in the callback's hooks, during fits
        self.after = 0.0  # image summaries and the HParams record

    def timed(self, fn, field: str):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self, field, getattr(self, field) + time.perf_counter() - start)
        return wrapper


def timed_board(spent: Spent):
    """board.EpochBoard with every hook it overrides timed into `spent.fit`."""
    hooks = [name for name in dir(keras.callbacks.Callback) if name.startswith("on_")
             and getattr(board.EpochBoard, name) is not getattr(keras.callbacks.Callback, name)]
    return type("TimedBoard", (board.EpochBoard,),
                {name: spent.timed(getattr(board.EpochBoard, name), "fit") for name in hooks}), hooks


def inside_fit(tmp: str, epochs: int, repeats: int) -> list[dict]:
    """Runs with --tensorboard in this process, TensorBoard's own seconds timed."""
    from click.testing import CliRunner

    rows, originals = [], (board.callback, board.write_images, board.write_hparams)
    for r in range(repeats + 1):  # the first run warms up (imports, first traces) and is not counted
        spent = Spent()
        cls, hooks = timed_board(spent)
        board.callback = lambda log_dir: cls(log_dir=str(log_dir), histogram_freq=0, write_graph=False,
                                             write_images=False, update_freq="epoch", profile_batch=0)
        board.write_images = spent.timed(originals[1], "after")
        board.write_hparams = spent.timed(originals[2], "after")
        try:
            out = os.path.join(tmp, f"inside-{r}")
            result = CliRunner().invoke(cli_main, _args(out, epochs, os.path.join(tmp, "tb-inside")))
            assert result.exit_code == 0, result.output
        finally:
            board.callback, board.write_images, board.write_hparams = originals
        train = float(pd.read_csv(out + ".csv").iloc[-1]["train_seconds"])
        if r:
            rows.append({"train": train, "hooks": spent.fit, "after": spent.after})
    print(f"Timed hooks (those Keras's TensorBoard callback overrides and EpochBoard keeps): {', '.join(hooks)}\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-end-to-end", action="store_true", help="only the timing inside the fit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = inside_fit(tmp, args.epochs, args.repeats)
        print(f"| inside the fit (digits 16x16, {args.epochs} epochs, with --tensorboard) | train s | "
              "TensorBoard hooks s | images + HParams s | TensorBoard's share |")
        print("|---|---:|---:|---:|---:|")
        for i, row in enumerate(rows, 1):
            share = (row["hooks"] + row["after"]) / (row["train"] - row["hooks"])
            print(f"| run {i} | {row['train']:.2f} | {row['hooks']:.3f} | {row['after']:.3f} | {share:.2%} |")
        hooks = statistics.median(r["hooks"] for r in rows)
        print(f"\nTensorBoard's hooks: {1000 * hooks / args.epochs:.1f} ms an epoch (median run)\n")
        if args.no_end_to_end:
            return
        times = {False: [], True: []}
        for r in range(args.repeats):
            for tb in (False, True):
                out = os.path.join(tmp, f"run-{r}-{int(tb)}")
                times[tb].append(pretrain_process(out, args.epochs, os.path.join(tmp, "tb") if tb else None))
    med = {b: (statistics.median(t for t, _ in v), statistics.median(w for _, w in v)) for b, v in times.items()}
    print(f"| end to end (digits 16x16, {args.epochs} epochs, fresh processes) | train s (median) | "
          "wall s (median) | runs (train s) |")
    print("|---|---:|---:|---|")
    for tb, label in ((False, "without --tensorboard"), (True, "with --tensorboard")):
        print(f"| {label} | {med[tb][0]:.1f} | {med[tb][1]:.1f} | {', '.join(f'{t:.1f}' for t, _ in times[tb])} |")
    print(f"\nRatio with / without: train {med[True][0] / med[False][0]:.3f}, wall {med[True][1] / med[False][1]:.3f}")


if __name__ == "__main__":
    main()
