"""Benchmark: pretraining images per second, the toolkit vs a plain Keras `model.fit`.

The same autoencoder (encoder preset + mirrored decoder) on the same images
(`photos`, 4,000 patches, the same held-out tenth for validation) is trained by
`transfer`'s pretrain pipeline and by a hand-written `autoencoder.fit(x, x)`,
alternating, in one process, and the median images/second of each is
compared. Both are timed from building the model to the held-out
reconstruction (the toolkit's `images_per_second` column).

    python benchmarks/pretrain_throughput.py [--arch small] [--image-size 32] [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def toolkit(arch, image_size, epochs, batch_size, out) -> float:
    from pipelines import pretrain
    from transfer.config import PretrainConfig

    row = pretrain.run(PretrainConfig(data="photos", out=out, objective="autoencoder", arch=arch,
                                      image_size=image_size, epochs=epochs, batch_size=batch_size,
                                      results=os.path.join(os.path.dirname(out), "results.csv"), plots=False),
                       log=lambda m: None)
    return float(row["images_per_second"])


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
    from transfer import data

    pool = data.load_unlabeled("photos", args.image_size)
    train_idx, val_idx = holdout_split(pool.ids)  # the same split the pipeline uses
    images, val = pool.images[train_idx], pool.images[val_idx]
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            keras.backend.clear_session()
            ours.append(toolkit(args.arch, args.image_size, args.epochs, args.batch_size, os.path.join(tmp, f"r{r}")))
            keras.backend.clear_session()
            plain.append(plain_keras(images, val, args.arch, args.epochs, args.batch_size))
    m_ours, m_plain = statistics.median(ours), statistics.median(plain)
    print(f"\nAutoencoder pretraining, arch {args.arch}, {len(images)} images at {args.image_size}x{args.image_size}, "
          f"{args.epochs} epochs, batch {args.batch_size}; median of {args.repeats} alternating runs\n")
    print("| trainer | images/s (median) | runs |")
    print("|---|---:|---|")
    print(f"| transfer pretrain | {m_ours:.0f} | {', '.join(f'{v:.0f}' for v in ours)} |")
    print(f"| plain Keras fit | {m_plain:.0f} | {', '.join(f'{v:.0f}' for v in plain)} |")
    print(f"\nratio transfer / plain Keras = {m_ours / m_plain:.2f}")


if __name__ == "__main__":
    main()
