"""Benchmark: what tf.distribute's multiworker machinery costs, 1 vs 2 workers on this machine.

Pretrains the same images with the same global batch (so the same number of steps and the
same updates) in one process (`--strategy one`) and as two worker processes on 127.0.0.1
(`--strategy multiworker`), alternating, and prints images/s, seconds per epoch and the
2-worker / 1-worker ratio per objective. On one machine the two workers share its cores, so
no speed-up is expected: the ratio is the price of the machinery (per-step all-reduce of the
gradients, and for contrastive the all-gather of the projections) plus two processes
competing for the same cores. Whole-process wall time is reported too (start-up and joining
the cluster included).

    python benchmarks/workers.py [--objectives contrastive,autoencoder] [--images 3000] [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from streaming import make_images  # noqa: E402


def pretrain(workers: int, objective: str, data: str, out: str, epochs: int, batch: int) -> dict:
    """One pretraining with `workers` processes; returns the chief's row and the wall time."""
    results = out + ".csv"
    args = ["pretrain", "--data", data, "--out", out, "--objective", objective, "--epochs", str(epochs),
            "--image-size", "32", "--batch-size", str(batch), "--no-plots", "--results", results,
            "--strategy", "one" if workers == 1 else "multiworker"]
    from transfer.distribute import localhost_cluster

    configs = localhost_cluster(workers) if workers > 1 else [None]
    start = time.perf_counter()
    procs = []
    for config in configs:
        env = {**os.environ, **({"TF_CONFIG": config} if config else {})}
        procs.append(subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"{workers}-worker {objective} pretraining failed")
    wall = time.perf_counter() - start
    import pandas as pd

    row = pd.read_csv(results).iloc[-1]
    return {"ips": float(row["images_per_second"]), "wall": wall, "n_train": int(row["n_train"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", default="contrastive,autoencoder")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="Global batch (over all workers).")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "images")
        make_images(data, args.images)
        for objective in args.objectives.split(","):
            runs = {1: [], 2: []}
            for r in range(args.repeats):
                for workers in (1, 2):  # alternating, so drift on a shared machine hits both alike
                    runs[workers].append(pretrain(workers, objective, data, os.path.join(tmp, f"{objective}-{workers}-{r}"),
                                                  args.epochs, args.batch_size))
                    print(f"  {objective} {workers} worker(s): {runs[workers][-1]}", file=sys.stderr, flush=True)
            table.append((objective, runs))
    print(f"\nPretraining {args.images} 32x32 RGB images (90% trained on), {args.epochs} epochs, global batch "
          f"{args.batch_size}, one machine ({os.cpu_count()} cores); median of {args.repeats} alternating runs\n")
    print("| objective | workers | images/s | s/epoch (training) | whole process s | images/s vs 1 worker |")
    print("|---|---:|---:|---:|---:|---:|")
    for objective, runs in table:
        one = statistics.median(r["ips"] for r in runs[1])
        for workers in (1, 2):
            ips = statistics.median(r["ips"] for r in runs[workers])
            wall = statistics.median(r["wall"] for r in runs[workers])
            per_epoch = runs[workers][0]["n_train"] / ips
            print(f"| {objective} | {workers} | {ips:.0f} | {per_epoch:.2f} | {wall:.1f} | {ips / one:.2f} |")


if __name__ == "__main__":
    main()
