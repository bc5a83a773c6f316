"""Benchmark: streamed pretraining keeps memory flat as the image count grows tenfold.

Generates N small RGB PNG files (default 5,000 and 50,000; 40x40, resized to 32),
then for each N, in a fresh process each (so that peak resident memory is that
run's own):
- `transfer pretrain --data DIR` (files listed, decoded by tf.data each epoch);
- `transfer prepare DIR` once, then `transfer pretrain --data PREPARED` (TFRecord shards);
- for reference, decoding all of DIR into memory at once (`transfer.stream.load`),
  which is what streaming avoids.
It prints one table: peak memory, pretraining images/second, and the ratios
the issue asks for (50k vs 5k memory and speed; prepared vs files speed).

    python benchmarks/streaming.py [--sizes 5000,50000] [--epochs 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

IMAGE = 40


def make_images(folder: str, n: int, seed: int = 0) -> None:
    """n RGB PNGs of smooth random blobs plus noise (so they compress like photographs, not like noise)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE] / IMAGE
    for i in range(n):
        cx, cy, r = rng.random(3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.2 * r))
        img = blob[..., None] * rng.random(3) + 0.15 * rng.random((IMAGE, IMAGE, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(os.path.join(folder, f"{i:06d}.png"))


def run_cli(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def pretrain(data: str, out: str, results: str, epochs: int) -> dict:
    run_cli(["pretrain", "--data", data, "--out", out, "--objective", "autoencoder", "--epochs", str(epochs),
             "--image-size", "32", "--batch-size", "256", "--no-plots", "--results", results])
    import pandas as pd

    row = pd.read_csv(results).iloc[-1]
    return {"peak_mb": float(row["peak_memory_mb"]), "ips": float(row["images_per_second"]),
            "gflops": float(row["gflops_per_second"])}


IN_MEMORY = """
import json, sys
import numpy as np
from transfer import stream, training
source = stream.open_source(sys.argv[1], False, 32)
images = stream.load(source, np.arange(len(source)), 32)
print(json.dumps({"peak_mb": training.peak_memory_mb(), "bytes": images.images.nbytes}))
"""


def in_memory(folder: str) -> dict:
    out = subprocess.run([sys.executable, "-c", IN_MEMORY, folder], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="Keep the generated images here (default: a temp dir).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="transfer-bench-")
    rows = {}
    for n in sizes:
        folder = os.path.join(work, f"images-{n}")
        if not os.path.isdir(folder):
            make_images(folder, n)
        results = os.path.join(work, f"results-{n}.csv")
        for leftover in (results,):
            if os.path.exists(leftover):
                os.remove(leftover)
        files = pretrain(folder, os.path.join(work, f"enc-files-{n}-{time.time_ns()}"), results, args.epochs)
        prepared_dir = os.path.join(work, f"prepared-{n}")
        prepare_seconds = None
        if not os.path.isdir(prepared_dir):
            prepare_seconds = run_cli(["prepare", folder, "--out", prepared_dir, "--image-size", "32"])
        prepared = pretrain(prepared_dir, os.path.join(work, f"enc-prep-{n}-{time.time_ns()}"), results, args.epochs)
        rows[n] = {"files": files, "prepared": prepared, "prepare_s": prepare_seconds, "memory": in_memory(folder)}

    print(f"\nAutoencoder pretraining (arch small, 32x32x3, batch 256, {args.epochs} epochs), "
          f"PNG files of {IMAGE}x{IMAGE}; one fresh process per cell\n")
    print("| images | source | peak memory MiB | images/s | GFLOP/s |")
    print("|---:|---|---:|---:|---:|")
    for n, r in rows.items():
        for name in ("files", "prepared"):
            c = r[name]
            print(f"| {n:,} | {name} (streamed) | {c['peak_mb']:.0f} | {c['ips']:.0f} | {c['gflops']:.1f} |")
        m = r["memory"]
        print(f"| {n:,} | all decoded into memory (no training) | {m['peak_mb']:.0f} | | |")
    if len(sizes) >= 2:
        small, large = rows[sizes[0]], rows[sizes[-1]]
        print(f"\nstreamed from files, {sizes[-1]:,} vs {sizes[0]:,} images: peak memory "
              f"{large['files']['peak_mb'] / small['files']['peak_mb']:.2f}x, images/s "
              f"{large['files']['ips'] / small['files']['ips']:.2f}x")
        print(f"prepared TFRecords, {sizes[-1]:,} vs {sizes[0]:,} images: peak memory "
              f"{large['prepared']['peak_mb'] / small['prepared']['peak_mb']:.2f}x, images/s "
              f"{large['prepared']['ips'] / small['prepared']['ips']:.2f}x")
    for n, r in rows.items():
        note = f" (prepare took {r['prepare_s']:.0f}s)" if r["prepare_s"] else ""
        print(f"prepared vs files at {n:,} images: {r['prepared']['ips'] / r['files']['ips']:.2f}x images/s{note}")


if __name__ == "__main__":
    main()
