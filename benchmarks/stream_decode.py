"""Benchmark: what a pass over streamed images costs, decoded from files every pass vs
decoded once (`transfer.stream.decode_once`), side by side in one run.

Writes the 1,797 scikit-learn digits as 28x28 grayscale PNG files (a folder, as a
user's data arrives), then, each in its own process, with the modes taking turns for
`--repeats` rounds (the machine is shared and noisy; the table gives the median):
- stream: µs per image to draw `--batches` batches of 224 (FixMatch's pool batch) at
  `--image-size`, from the files decoded every pass, from the file decoded once, from
  prepared TFRecord shards (`transfer prepare`) and from memory (the built-in digits);
- fixmatch: seconds per 100 FixMatch steps of `transfer fine-tune --unlabeled FOLDER`
  (scratch, 10 labels/class, 300 steps; the median of epochs 2-3, after tracing), with
  the pool decoded every pass and decoded once;
- pretrain: seconds per epoch of `transfer pretrain --data FOLDER` (contrastive, 6
  epochs; the median of epochs 2-6), decoded every epoch and decoded once.

    python benchmarks/stream_decode.py [--image-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STREAMS = ("files", "decoded", "prepared", "memory")
RUNS = {"fixmatch": ("files", "decoded"), "pretrain": ("files", "decoded")}


def write_digits(folder: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(load_digits().images):
        pixels = Image.fromarray((image / 16 * 255).astype(np.uint8)).resize((28, 28), Image.BILINEAR)
        pixels.save(folder / f"{i:04d}.png")


def stream_worker(mode: str, folder: str, prepared_dir: str, image_size: int, batches: int) -> float:
    """µs per image of `batches` batches of 224 drawn from `mode`."""
    import numpy as np

    from transfer import stream

    src = {"files": folder, "decoded": folder, "prepared": prepared_dir, "memory": "digits"}[mode]
    source = stream.open_source(src, False, image_size)
    index = np.arange(len(source))
    if mode == "decoded":
        source, index = stream.decode_once(source, index, image_size, passes=batches, log=lambda line: None)
    it = iter(stream.dataset(source, index, image_size, batch_size=224, shuffle=True, forever=True))
    for _ in range(3):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / (batches * 224) * 1e6


def run_worker(kind: str, mode: str, folder: str, image_size: int, workdir: str) -> float:
    """Median seconds per history row (after the first) of a CLI run on the folder."""
    import pandas as pd
    from click.testing import CliRunner

    from cli import main
    from transfer import stream

    if mode == "files":
        # the previous behaviour: every pass decodes the files (the pipelines call stream.decode_once)
        stream.decode_once = lambda source, index, image_size, passes, log=print: (source, index)
    out = Path(tempfile.mkdtemp(dir=workdir)) / "run"
    common = ["--image-size", str(image_size), "--out", str(out), "--results", str(out.parent / "r.csv")]
    if kind == "fixmatch":
        args = ["fine-tune", "--data", "digits", "--encoder", "random", "--freeze", "none", "--labels-per-class",
                "10", "--unlabeled", folder, "--steps", "300", *common]
        history = "history-semi.csv"
    else:
        args = ["pretrain", "--data", folder, "--epochs", "6", *common]
        history = "history.csv"
    result = CliRunner().invoke(main, args)
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return float(statistics.median(pd.read_csv(out / history)["seconds"].iloc[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="stream-decode-"))
    folder, prepared_dir = workdir / "digits_png", workdir / "digits_prepared"
    if args.worker:
        kind, mode = args.worker
        if kind == "stream":
            value = stream_worker(mode, str(folder), str(prepared_dir), args.image_size, args.batches)
        else:
            value = run_worker(kind, mode, str(folder), args.image_size, str(workdir))
        print(json.dumps(value))
        os._exit(0)  # a live tf.data iterator over Python decoding can hang the interpreter's exit
    if not folder.exists():
        write_digits(folder)
    if not prepared_dir.exists():
        subprocess.run([sys.executable, "-m", "cli", "prepare", str(folder), "--out", str(prepared_dir),
                        "--image-size", str(args.image_size)], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[1])
    cells = [("stream", m) for m in STREAMS] + [(k, m) for k, modes in RUNS.items() for m in modes]
    times = {cell: [] for cell in cells}
    for _ in range(args.repeats):  # the modes take turns
        for kind, mode in cells:
            out = subprocess.run([sys.executable, __file__, "--worker", kind, mode, "--image-size",
                                  str(args.image_size), "--batches", str(args.batches), "--workdir", str(workdir)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{kind} {mode} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            times[(kind, mode)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"1,797 digits as 28x28 PNG files, read at {args.image_size}x{args.image_size} "
          f"({args.repeats} rounds, one process each, median)")
    print(f"{'what':10s} {'source':28s} {'value':>9s} {'vs files':>9s}")
    units = {"stream": "µs/image", "fixmatch": "s/100 steps", "pretrain": "s/epoch"}
    for kind in ("stream", *RUNS):
        files = statistics.median(times[(kind, "files")])
        for k, mode in cells:
            if k != kind:
                continue
            value = statistics.median(times[(k, mode)])
            label = {"files": "files, decoded every pass", "decoded": "files, decoded once",
                     "prepared": "prepared shards", "memory": "in memory (built-in)"}[mode]
            print(f"{kind:10s} {label:28s} {value:9.2f} {files / value:8.1f}x  ({units[kind]})")


if __name__ == "__main__":
    main()
