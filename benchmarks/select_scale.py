"""Benchmark: `transfer select` on a pool of 100,000 streamed 32x32 images (the target: under
2 minutes and under 2 GiB peak memory on 2 cores).

Writes N RGB PNG files (default 100,000; smooth random blobs plus noise, 32x32) into a work
folder (kept with --workdir, so a second run skips the writing), then runs, each in a fresh
process (so that peak resident memory is that run's own), `transfer select --data DIR
--encoder random --arch small --image-size 32 --labels B --selection S` for each strategy:
every image listed (content hash, header), decoded and passed through the encoder in
batches, then chosen from. A random encoder costs the same feature pass as a pretrained
one of the same architecture. Prints one table: wall seconds (the whole command), the
row's seconds and peak resident memory.

    python benchmarks/select_scale.py [--images 100000] [--budget 100] [--strategies typiclust,kcenter]
                                      [--workdir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
PER_FOLDER = 1000


def _write(args: tuple[str, int, int]) -> None:
    """Images start..stop-1 into folder/<thousands>/<i>.png."""
    from PIL import Image

    folder, start, stop = args
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for i in range(start, stop):
        sub = os.path.join(folder, f"{i // PER_FOLDER:04d}")
        os.makedirs(sub, exist_ok=True)
        cx, cy, r = rng.random(3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.2 * r))
        img = blob[..., None] * rng.random(3) + 0.15 * rng.random((SIZE, SIZE, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(os.path.join(sub, f"{i:06d}.png"))


def make_pool(folder: str, n: int) -> float:
    """Seconds to write the n images (0 when the folder already holds them)."""
    marker = os.path.join(folder, f".complete-{n}")
    if os.path.exists(marker):
        return 0.0
    start = time.perf_counter()
    chunks = [(folder, s, min(s + PER_FOLDER, n)) for s in range(0, n, PER_FOLDER)]
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(_write, chunks)
    open(marker, "w").close()
    return time.perf_counter() - start


def select(data: str, out: str, results: str, budget: int, strategy: str) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from cli import main; main()", "select", "--data", data,
                    "--encoder", "random", "--arch", "small", "--image-size", str(SIZE), "--labels", str(budget),
                    "--selection", strategy, "--out", out, "--results", results], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - start
    row = pd.read_csv(results).iloc[-1]
    return {"wall": wall, "seconds": float(row["seconds"]), "peak_mb": float(row["peak_memory_mb"]),
            "chosen": len(pd.read_csv(out))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--strategies", default="typiclust,kcenter")
    parser.add_argument("--workdir", default=None, help="where the pool is written (and kept); a temporary folder by default")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="select-scale-")
    pool = os.path.join(work, "pool")
    wrote = make_pool(pool, args.images)
    print(f"{args.images:,} images of {SIZE}x{SIZE} in {pool}" + (f" (written in {wrote:.0f} s)" if wrote else "")
          + f"; {os.cpu_count()} cores\n")
    print(f"| select, {args.images:,} streamed {SIZE}x{SIZE} images, budget {args.budget}, random small encoder "
          "| wall s | row seconds | peak MiB | chosen |")
    print("|---|---:|---:|---:|---:|")
    for strategy in args.strategies.split(","):
        got = select(pool, os.path.join(work, f"{strategy}.csv"), os.path.join(work, "results.csv"), args.budget,
                     strategy)
        print(f"| {strategy} | {got['wall']:.0f} | {got['seconds']:.0f} | {got['peak_mb']:.0f} | {got['chosen']} |",
              flush=True)


if __name__ == "__main__":
    main()
