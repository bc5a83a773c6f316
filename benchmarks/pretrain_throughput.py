"""Benchmark: pretraining throughput, the toolkit vs a plain Keras `model.fit` vs the machine's ceiling.

The same autoencoder (encoder preset + mirrored decoder) on the same images
(`photos`, 4,000 patches, the same held-out tenth for validation) is trained by
`transfer`'s pretrain pipeline and by a hand-written `autoencoder.fit(x, x)`,
alternating, in one process, and the median images/second of each is
compared. Both are timed from building the model to the held-out
reconstruction (the toolkit's `images_per_second` column). Achieved GFLOP/s
is images/s times the model's training FLOPs per image (`train_flops_per_image`,
3x the forward count of its convolutions and dense layers). The practical
ceiling is a large float32 matrix product (`tf.matmul`, 2n^3 FLOPs) timed in
the same process.

    python benchmarks/pretrain_throughput.py [--arch small] [--image-size 32] [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of GFLOP/s of an n x n float32 matrix product: the practical ceiling of this machine."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.matmul(a, b).numpy()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def plain_keras(images, val, arch, epochs, batch_size) -> float:
    """Timed like the toolkit's figure: from building the model to the held-out reconstruction."""
    import keras

    from transfer import models
    from transfer.architectures import preset_blocks

    start = time.perf_counter()
    blocks = preset_blocks(arch)
    encoder = models.build_encoder(images.shape[1:], blocks, arch)
    autoencoder = models.build_autoencoder(encoder, models.build_decoder(encoder, blocks, images.shape[-1]))
    autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    autoencoder.fit(images, images, epochs=epochs, batch_size=batch_size, verbose=0, validation_data=(val, val))
    autoencoder.predict(val, batch_size=batch_size, verbose=0)
    return len(images) * epochs / (time.perf_counter() - start)


def toolkit(arch, image_size, epochs, batch_size, out) -> tuple[float, float]:
    from pipelines import pretrain
    from transfer.config import PretrainConfig

    row = pretrain.run(PretrainConfig(data="photos", out=out, objective="autoencoder", arch=arch,
                                      image_size=image_size, epochs=epochs, batch_size=batch_size,
                                      results=os.path.join(os.path.dirname(out), "results.csv"), plots=False),
                       log=lambda m: None)
    return float(row["images_per_second"]), float(row["train_flops_per_image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras

    from pipelines.common import holdout_split
    from transfer import stream

    pool = stream.open_source("photos", False, args.image_size)
    train_idx, val_idx = holdout_split(pool.ids)  # the same split the pipeline uses
    images, val = pool.images[train_idx], pool.images[val_idx]
    ours, plain, ceiling = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            keras.backend.clear_session()
            ips, flops = toolkit(args.arch, args.image_size, args.epochs, args.batch_size, os.path.join(tmp, f"r{r}"))
            ours.append(ips)
            keras.backend.clear_session()
            plain.append(plain_keras(images, val, args.arch, args.epochs, args.batch_size))
            ceiling.append(matmul_gflops())
    m_ours, m_plain, m_ceiling = statistics.median(ours), statistics.median(plain), statistics.median(ceiling)
    g_ours, g_plain = m_ours * flops / 1e9, m_plain * flops / 1e9
    print(f"\nAutoencoder pretraining, arch {args.arch}, {len(images)} images at {args.image_size}x{args.image_size}, "
          f"{args.epochs} epochs, batch {args.batch_size}; median of {args.repeats} alternating runs\n")
    print(f"training FLOPs per image: {flops / 1e6:.1f} M\n")
    print("| trainer | images/s (median) | GFLOP/s | runs (images/s) |")
    print("|---|---:|---:|---|")
    print(f"| transfer pretrain | {m_ours:.0f} | {g_ours:.1f} | {', '.join(f'{v:.0f}' for v in ours)} |")
    print(f"| plain Keras fit | {m_plain:.0f} | {g_plain:.1f} | {', '.join(f'{v:.0f}' for v in plain)} |")
    print(f"| float32 matmul 2048^2 (ceiling) | | {m_ceiling:.1f} | {', '.join(f'{v:.1f}' for v in ceiling)} GFLOP/s |")
    print(f"\nratio transfer / plain Keras = {m_ours / m_plain:.2f}")
    print(f"ratio transfer / matmul ceiling = {g_ours / m_ceiling:.2f}")


if __name__ == "__main__":
    main()
