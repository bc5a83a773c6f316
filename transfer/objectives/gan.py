"""Adversarial pretraining (DCGAN, Radford et al. 2015): the encoder is the discriminator.

A DCGAN generator (latent noise -> Dense -> kernel-4 transposed convs) makes
images like the training data; the discriminator (the encoder's conv blocks,
flattened, plus the batch's feature spread, and one logit) learns to tell them
from real ones. Radford et al. showed that discriminator features transfer to
classification. After training, the discriminator's conv blocks are saved as
the encoder, like any other objective's.

Stabilizers, all standard: Adam(beta_1=0.5) for both networks, one-sided
label smoothing (real = 0.9), instance noise on the discriminator's inputs
(Sønderby et al. 2016), minibatch standard deviation as a discriminator feature
(Karras et al. 2018, per half of the mixed real/fake batch), BatchNorm in the
generator, and feature matching as the generator's loss (Salimans et al. 2016):
the generator matches the mean encoder features of real images instead of
fooling the logit (why: README, "Pretraining objectives"). A fixed-noise grid
of samples is saved after every epoch (`samples/epoch_NNN.png`), and mode
collapse is checked at the end: the mean pairwise distance between 64
generated samples is compared with that between held-out real images
(`sample_diversity`, ~1 when the samples vary as much as the data; a collapsed
generator gives ~0).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from transfer import distribute, models, visualize
from transfer.layers import BatchNormalization
from transfer.objectives.base import Options, Report

NAME = "gan"
LEARNING_RATE = 2e-4  # DCGAN's, for both networks
VALIDATES = False
BETA_1 = 0.5
LATENT = 64
REAL_LABEL = 0.9
INSTANCE_NOISE = 0.1  # std of Gaussian noise on the discriminator's inputs, real and fake alike
GRID = 8


def build_generator(encoder, channels: int, latent: int = LATENT) -> keras.Model:
    """DCGAN generator: noise -> Dense to a 4x4-ish map -> kernel-4, stride-2 transposed
    convs (kernel divisible by stride: no checkerboard), BatchNorm, ReLU -> sigmoid image."""
    size = encoder.input.shape[1]
    steps = max(1, int(np.floor(np.log2(max(size, 8) / 4))))
    start = -(-size // 2**steps)
    width = min(256, 32 * 2**steps)
    z = keras.Input((latent,), name="noise")
    x = layers.Dense(start * start * width, use_bias=False, name="project")(z)
    x = BatchNormalization(momentum=models.BN_MOMENTUM, name="project_bn")(x)
    x = layers.Activation("relu", name="project_act")(x)
    x = layers.Reshape((start, start, width), name="to_maps")(x)
    for i in range(1, steps + 1):
        width = max(width // 2, 32)
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"g{i}_deconv")(x)
        x = BatchNormalization(momentum=models.BN_MOMENTUM, name=f"g{i}_bn")(x)
        x = layers.Activation("relu", name=f"g{i}_act")(x)
    if x.shape[1] != size:
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    images = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="image", dtype="float32")(x)
    return keras.Model(z, images, name="generator")


class MinibatchStd(layers.Layer):
    """Appends a batch's mean feature standard deviation to its examples (Karras et al. 2018):
    a discriminator that sees how varied a batch is penalizes a generator that collapses.

    The discriminator sees real and fake images in one batch (real first, then as many
    fake), so the spread is computed per half: over the whole mixed batch it would be
    the same number for real and fake and tell the discriminator nothing. Used only
    while training; it is not part of the saved encoder.
    """

    def call(self, x):
        halves = tf.reshape(x, [2, -1, x.shape[-1]])
        _, variance = tf.nn.moments(halves, axes=[1])
        std = tf.reduce_mean(tf.sqrt(variance + 1e-8), axis=1)  # the epsilon keeps the gradient finite at zero spread
        per_example = tf.repeat(std, tf.shape(x)[0] // 2)
        return tf.concat([x, per_example[:, None]], axis=1)


def build_discriminator(encoder) -> keras.Model:
    """image -> (real/fake logit, the encoder's flattened features)."""
    image = keras.Input(encoder.input.shape[1:], name="image")
    features = layers.Flatten(name="d_flatten")(encoder(image))
    x = MinibatchStd(name="d_batch_std")(features)
    return keras.Model(image, [layers.Dense(1, name="d_logit", dtype="float32")(x), features], name="discriminator")


class GAN(keras.Model):
    def __init__(self, encoder, generator, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.generator = encoder, generator
        self.discriminator = build_discriminator(encoder)
        self.latent = generator.input.shape[-1]
        self.noise = keras.random.SeedGenerator(seed)
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True)
        self.trackers = {k: keras.metrics.Mean(name=k) for k in ("loss", "d_loss", "g_loss")}

    def build(self, input_shape):
        self.built = True

    def _blur(self, images):
        """Instance noise: overlapping real and fake distributions keep the discriminator from winning outright."""
        return images + keras.random.normal(tf.shape(images), stddev=INSTANCE_NOISE, seed=self.noise)

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        # Built now, in the strategy's scope: built lazily inside a replica's step they could not be mirrored.
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _discriminator_loss(self, real, z, n):
        fake = self.generator(z, training=True)
        # One batch of real and fake together: with two batches, BatchNorm's per-batch
        # statistics alone would tell them apart, and the discriminator wins outright.
        logits, _ = self.discriminator(self._blur(tf.concat([real, fake], axis=0)), training=True)
        real_logits, fake_logits = logits[:n], logits[n:]
        return self.bce(tf.fill(tf.shape(real_logits), REAL_LABEL), real_logits) + self.bce(
            tf.zeros_like(fake_logits), fake_logits)

    def _generator_loss(self, real, z, n):
        fake = self.generator(z, training=True)
        _, features = self.discriminator(self._blur(tf.concat([real, fake], axis=0)), training=True)
        # Feature matching (Salimans et al. 2016): the mean encoder features of real images.
        real_mean = tf.stop_gradient(tf.reduce_mean(features[:n], axis=0))
        return tf.cast(tf.reduce_mean(tf.square(real_mean - tf.reduce_mean(features[n:], axis=0))), tf.float32)

    def train_step(self, data):
        real = data[0] if isinstance(data, tuple) else data
        n = tf.shape(real)[0]
        z = keras.random.normal((n, self.latent), seed=self.noise)
        d_loss = distribute.gradient_step(self.d_optimizer, self.discriminator.trainable_variables,
                                          lambda: self._discriminator_loss(real, z, n))
        z = keras.random.normal((n, self.latent), seed=self.noise)
        g_loss = distribute.gradient_step(self.g_optimizer, self.generator.trainable_variables,
                                          lambda: self._generator_loss(real, z, n))
        for key, value in (("loss", d_loss + g_loss), ("d_loss", d_loss), ("g_loss", g_loss)):
            self.trackers[key].update_state(value)
        return {k: t.result() for k, t in self.trackers.items()}


class SampleGrid(keras.callbacks.Callback):
    """Saves a GRID x GRID image of samples from fixed noise after every epoch."""

    def __init__(self, generator, noise: np.ndarray, folder: Path):
        super().__init__()
        self.generator, self.noise, self.folder = generator, noise, Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        save_grid(sample(self.generator, self.noise), self.folder / f"epoch_{epoch + 1:03d}.png")


def sample(generator, noise: np.ndarray) -> np.ndarray:
    """Images for fixed noise, generated the way training generates them: BatchNorm with the
    batch's own statistics. The moving averages lag a generator that changes every step, and
    sampling with them gives saturated, near-identical images that look like mode collapse."""
    return np.asarray(generator(noise, training=True))


def save_grid(images: np.ndarray, path: Path) -> None:
    tiles = [img if img.shape[-1] in (1, 3) else img[..., :3] for img in images]
    visualize.save_png(visualize.tile(tiles, columns=int(np.ceil(np.sqrt(len(tiles)))), pad=0), path)


def diversity(images: np.ndarray) -> float:
    flat = images.reshape(len(images), -1).astype(np.float64)
    d = np.sqrt(np.maximum(((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1), 0.0))
    return float(d[np.triu_indices(len(flat), 1)].mean())


def build(encoder, blocks, shape, options: Options) -> GAN:
    """`blocks` is unused: the generator need not mirror the encoder."""
    generator = build_generator(encoder, shape[-1])
    gan = GAN(encoder, generator, seed=options.seed)
    gan.compile(d_optimizer=keras.optimizers.Adam(options.learning_rate, beta_1=BETA_1),
                g_optimizer=keras.optimizers.Adam(options.learning_rate, beta_1=BETA_1))
    gan.build(None)
    gan.fixed_noise = np.random.default_rng(options.seed).normal(size=(GRID * GRID, LATENT)).astype("float32")
    return gan


def callbacks(model: GAN, run_dir) -> list:
    return [SampleGrid(model.generator, model.fixed_noise, Path(run_dir) / "samples")]


def report(model: GAN, train, val_images: np.ndarray) -> Report:
    samples = sample(model.generator, model.fixed_noise)
    real = val_images[: GRID * GRID]
    ratio = diversity(samples) / max(diversity(real), 1e-8) if len(real) > 1 else float("nan")
    last = model.history.history if model.history else {}
    metrics = {"d_loss": float(last["d_loss"][-1]), "g_loss": float(last["g_loss"][-1]),
               "sample_diversity": ratio,
               # per real image and step: two updates, each a generator pass and a discriminator pass over
               # real + fake, forward + backward (~3 forward passes)
               "train_flops_per_image": 6 * (models.forward_flops(model.generator)
                                             + 2 * models.forward_flops(model.discriminator))}
    warnings = []
    if ratio < 0.3:
        warnings.append(f"generated samples vary {ratio:.2f}x as much as real images: the generator may have "
                        "collapsed to few modes; its discriminator features may be weak")
    return Report(metrics=metrics, preview=samples[: len(val_images[:8])], preview_name="samples.png",
                  warnings=warnings)
