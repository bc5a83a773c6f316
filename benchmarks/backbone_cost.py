"""What an ImageNet backbone costs beside the toolkit's own `small` encoder, on this machine.

Two tables:

1. Per image, for each backbone of `transfer.backbones` and the `small` preset, at 32, 64 and 96
   pixels (gray input, as the built-ins): forward FLOPs, feature-extraction images/s (frozen:
   what `--freeze all` and `select`/`embed` pay per image) and training images/s (batch 32,
   everything trainable: what `--freeze none` or `--unfreeze-top 1` pays), measured side by side
   in one process after a warm-up.
2. Issue #49's target, end to end: `transfer fine-tune --data digits --labels-per-class 10` at
   32x32, from `keras:MobileNetV3Small` (random weights; the cost does not depend on them) against
   the `small` preset, both trained whole (the default recipe) and frozen with a linear head:
   wall seconds and the ratio.

    python benchmarks/backbone_cost.py [--sizes 32,64,96] [--steps 20] [--no-end-to-end]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_image(name: str, size: int, steps: int) -> dict:
    import keras
    import numpy as np

    from transfer import architectures, backbones, models

    if name == "small":
        encoder = models.build_encoder((size, size, 1), architectures.preset_blocks("small", None), "small")
    else:
        encoder = backbones.build(f"keras:{name}", "none", size, 1)
    flops = models.forward_flops(encoder)
    rng = np.random.default_rng(0)
    x = rng.random((32 * steps, size, size, 1)).astype("float32")
    y = rng.integers(0, 10, len(x))
    features = keras.Sequential([encoder, keras.layers.GlobalAveragePooling2D()])
    features.predict(x[:64], batch_size=32, verbose=0)  # warm-up: tracing
    start = time.perf_counter()
    features.predict(x, batch_size=32, verbose=0)
    infer = len(x) / (time.perf_counter() - start)
    classifier = keras.Sequential([features, keras.layers.Dense(10, activation="softmax")])
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    classifier.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # warm-up
    start = time.perf_counter()
    classifier.fit(x, y, batch_size=32, epochs=1, verbose=0)
    train = len(x) / (time.perf_counter() - start)
    return {"encoder": name, "size": size, "params": encoder.count_params(), "gflops": flops / 1e9,
            "infer": infer, "train": train}


def end_to_end(tmp: Path) -> list[tuple[str, str, float]]:
    rows = []
    for mode, extra in (("trained whole", ["--freeze", "none"]), ("frozen, linear head",
                                                                   ["--freeze", "all", "--unfreeze-top", "0"])):
        for label, encoder in (("small", ["--encoder", "random"]),
                               ("keras:MobileNetV3Small", ["--encoder", "keras:MobileNetV3Small", "--weights", "none"])):
            out = tmp / f"{label}-{mode}".replace(" ", "_").replace(":", "_").replace(",", "")
            command = [sys.executable, "-c", "from cli import main; main()", "fine-tune", "--data", "digits",
                       "--labels-per-class", "10", "--image-size", "32", *encoder, *extra, "--out", str(out),
                       "--results", str(tmp / "r.csv")]
            start = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
            rows.append((mode, label, time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,96")
    parser.add_argument("--steps", type=int, default=20, help="batches of 32 timed per measurement")
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args()
    from transfer import backbones

    print("| encoder | px | parameters | forward GFLOPs/image | features images/s | training images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in map(int, args.sizes.split(",")):
        for name in ("small", *backbones.BACKBONES):
            r = per_image(name, size, args.steps)
            print(f"| {r['encoder']} | {size} | {r['params']:,} | {r['gflops']:.3f} | {r['infer']:.0f} | "
                  f"{r['train']:.0f} |", flush=True)
    if args.no_end_to_end:
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = end_to_end(Path(tmp))
    print("\n| fine-tune on digits, 10 labels/class, 32x32 | encoder | wall s | vs small |")
    print("|---|---|---:|---:|")
    base = {mode: s for mode, label, s in rows if label == "small"}
    for mode, label, seconds in rows:
        print(f"| {mode} | {label} | {seconds:.1f} | {seconds / base[mode]:.2f}x |")


if __name__ == "__main__":
    main()
