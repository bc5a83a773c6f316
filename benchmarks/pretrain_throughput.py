"""Benchmark: pretraining throughput, the toolkit vs plain Keras vs the machine's ceiling.

The same objective, encoder and images are trained by `transfer pretrain` (the
pipeline, in process) and by a plain Keras model written the keras-io way,
alternating, in one process; the median images/second of each is compared.

- `--objective contrastive` (the default objective): the plain model is a SimCLR
  as keras-io's `semisupervised_simclr.py` writes it: the augmentation layers
  inside `train_step`, two views each through encoder and projector, the
  cross-view contrastive loss in both directions, `fit` on the in-memory images.
  It uses the toolkit's encoder preset, projector (Dense-BN-ReLU-Dense),
  temperature, batch size and augmentation ranges, written with Keras's own layers
  as a user writes them (RandomZoom, RandomTranslation, RandomRotation,
  RandomContrast, RandomBrightness, GaussianNoise; the built-in
  BatchNormalization), so only how the toolkit trains differs.
- `--objective autoencoder`: a hand-written `autoencoder.fit(x, x)` of the same
  encoder and mirrored decoder.

Both are timed over their `fit` only (the toolkit's `images_per_second`
column: training plus its per-epoch validation on the held-out tenth; the plain
fit validates on the same images). GFLOP/s is images/s times the objective's
training FLOPs per image (`train_flops_per_image`: 3x the forward count of
convolutions and dense layers per view). The ceiling is a large float32 matrix
product (`tf.matmul`, 2n^3 FLOPs) timed in the same run.

    python benchmarks/pretrain_throughput.py [--objective contrastive] [--arch small] [--image-size 32]
        [--epochs 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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


def _builtin(model):
    """The same architecture as a user builds it: Keras's own layers only (the toolkit's
    BatchNormalization is saved as, and so rebuilt from its config as, the built-in one)."""
    import keras

    return keras.models.model_from_json(model.to_json())


def plain_simclr(images, val, arch, epochs, batch_size) -> float:
    """A keras-io SimCLR (semisupervised_simclr.py's ContrastiveModel) with the toolkit's parts."""
    import keras
    from keras import layers, ops

    from transfer import models
    from transfer.architectures import preset_blocks
    from transfer.objectives import contrastive

    class ContrastiveModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.temperature = contrastive.TEMPERATURE
            self.contrastive_augmenter = keras.Sequential([  # the toolkit's ranges, as Keras's own layers
                layers.RandomZoom((-0.5, 0.1), fill_mode="constant"),
                layers.RandomTranslation(0.15, 0.15, fill_mode="constant"),
                layers.RandomRotation(0.04, fill_mode="constant"),
                layers.RandomContrast(0.6), layers.RandomBrightness(0.3, value_range=(0.0, 1.0)),
                layers.GaussianNoise(0.05)])
            self.encoder = keras.Sequential([_builtin(models.build_encoder(images.shape[1:], preset_blocks(arch), arch)),
                                             layers.GlobalAveragePooling2D()])
            units = contrastive.PROJECTION
            self.projection_head = keras.Sequential([
                keras.Input((self.encoder.output_shape[-1],)),
                layers.Dense(units[0], use_bias=False), layers.BatchNormalization(), layers.Activation("relu"),
                layers.Dense(units[1])])
            self.contrastive_loss_tracker = keras.metrics.Mean(name="c_loss")

        @property
        def metrics(self):
            return [self.contrastive_loss_tracker]

        def contrastive_loss(self, projections_1, projections_2):
            projections_1 = ops.normalize(projections_1, axis=1)
            projections_2 = ops.normalize(projections_2, axis=1)
            similarities = ops.matmul(projections_1, ops.transpose(projections_2)) / self.temperature
            batch = ops.shape(projections_1)[0]
            labels = ops.arange(batch)
            loss_1_2 = keras.losses.sparse_categorical_crossentropy(labels, similarities, from_logits=True)
            loss_2_1 = keras.losses.sparse_categorical_crossentropy(labels, ops.transpose(similarities),
                                                                    from_logits=True)
            return (loss_1_2 + loss_2_1) / 2

        def train_step(self, data):
            import tensorflow as tf

            augmented_1 = self.contrastive_augmenter(data, training=True)
            augmented_2 = self.contrastive_augmenter(data, training=True)
            with tf.GradientTape() as tape:
                projections_1 = self.projection_head(self.encoder(augmented_1, training=True), training=True)
                projections_2 = self.projection_head(self.encoder(augmented_2, training=True), training=True)
                loss = ops.mean(self.contrastive_loss(projections_1, projections_2))
            variables = self.encoder.trainable_weights + self.projection_head.trainable_weights
            gradients = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(gradients, variables))
            self.contrastive_loss_tracker.update_state(loss)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            projections_1 = self.projection_head(self.encoder(self.contrastive_augmenter(data, training=True)))
            projections_2 = self.projection_head(self.encoder(self.contrastive_augmenter(data, training=True)))
            self.contrastive_loss_tracker.update_state(ops.mean(self.contrastive_loss(projections_1, projections_2)))
            return {m.name: m.result() for m in self.metrics}

    model = ContrastiveModel()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    model.fit(images, epochs=epochs, batch_size=batch_size, verbose=0, validation_data=(val,))
    return len(images) * epochs / (time.perf_counter() - start)


def plain_autoencoder(images, val, arch, epochs, batch_size) -> float:
    import keras

    from transfer import models
    from transfer.architectures import preset_blocks

    blocks = preset_blocks(arch)
    encoder = _builtin(models.build_encoder(images.shape[1:], blocks, arch))
    decoder = models.build_decoder(encoder, blocks, images.shape[-1])
    inputs = keras.Input(encoder.input.shape[1:], name="image")
    autoencoder = _builtin(keras.Model(inputs, decoder(encoder(inputs)), name="autoencoder"))
    autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    start = time.perf_counter()
    autoencoder.fit(images, images, epochs=epochs, batch_size=batch_size, verbose=0, validation_data=(val, val))
    return len(images) * epochs / (time.perf_counter() - start)


PLAIN = {"contrastive": plain_simclr, "autoencoder": plain_autoencoder}


def toolkit(objective, arch, image_size, epochs, batch_size, out) -> tuple[float, float]:
    from pipelines import pretrain
    from transfer.config import PretrainConfig

    row = pretrain.run(PretrainConfig(data="photos", out=out, objective=objective, arch=arch,
                                      image_size=image_size, epochs=epochs, batch_size=batch_size,
                                      results=os.path.join(os.path.dirname(out), "results.csv"), plots=False),
                       log=lambda m: None)
    return float(row["images_per_second"]), float(row["train_flops_per_image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="contrastive", choices=sorted(PLAIN))
    parser.add_argument("--arch", default="small")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
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
            ips, flops = toolkit(args.objective, args.arch, args.image_size, args.epochs, args.batch_size,
                                 os.path.join(tmp, f"r{r}"))
            ours.append(ips)
            keras.backend.clear_session()
            plain.append(PLAIN[args.objective](images, val, args.arch, args.epochs, args.batch_size))
            ceiling.append(matmul_gflops())
    m_ours, m_plain, m_ceiling = statistics.median(ours), statistics.median(plain), statistics.median(ceiling)
    g_ours, g_plain = m_ours * flops / 1e9, m_plain * flops / 1e9
    print(f"\n{args.objective} pretraining, arch {args.arch}, {len(images)} images at "
          f"{args.image_size}x{args.image_size}, {args.epochs} epochs, batch {args.batch_size}; "
          f"median of {args.repeats} alternating runs\n")
    print(f"training FLOPs per image: {flops / 1e6:.1f} M\n")
    print("| trainer | images/s (median) | GFLOP/s | of the ceiling | runs (images/s) |")
    print("|---|---:|---:|---:|---|")
    print(f"| transfer pretrain | {m_ours:.0f} | {g_ours:.1f} | {g_ours / m_ceiling:.0%} | "
          f"{', '.join(f'{v:.0f}' for v in ours)} |")
    print(f"| plain Keras ({PLAIN[args.objective].__name__}) | {m_plain:.0f} | {g_plain:.1f} | "
          f"{g_plain / m_ceiling:.0%} | {', '.join(f'{v:.0f}' for v in plain)} |")
    print(f"| float32 matmul 2048^2 (ceiling) | | {m_ceiling:.1f} | 100% | "
          f"{', '.join(f'{v:.1f}' for v in ceiling)} GFLOP/s |")
    print(f"\nratio transfer / plain Keras = {m_ours / m_plain:.2f}")
    print(f"ratio transfer / matmul ceiling = {g_ours / m_ceiling:.2f}")


if __name__ == "__main__":
    main()
