"""Contrastive pretraining (SimCLR, Chen et al. 2020): two random views of each image are
pulled together, and apart from the other images of the batch, by the NT-Xent loss
through a small projection head that is dropped afterwards.

The augmentations are those that keep an image's identity in most domains:
random resized crops (zooms in to 0.7 of the side, shifts), small rotations,
strong brightness/contrast jitter (the colour jitter of SimCLR, for gray images
too), a light Gaussian blur and noise. No flips (they change digits and text). The recipe follows
SimCLR's for small encoders: a projector with BatchNorm, temperature 0.3, Adam
with a linear warm-up then cosine decay; the features kept are those before the
projector.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from transfer import augment, distribute, models
from transfer.layers import BatchNormalization
from transfer.objectives.base import Options, Report

NAME = "contrastive"
LEARNING_RATE = 1e-3
VALIDATES = True
TWO_VIEW = True
TEMPERATURE = 0.3
PROJECTION = (128, 64)
# Chosen by benchmarks/feature_quality.py on digits and animals together (docs/benchmarks.md): crops
# of 0.7 of the side at least and a light blur were as good as 0.5 and no blur on animals and a little
# better on digits (1-NN from 4 labels); --crop 0.5 --blur 0 is the earlier recipe.
CROP = 0.7  # the smallest crop side, as a fraction of the image's
BLUR = 0.5  # the views' Gaussian blur strength (keras.layers.RandomGaussianBlur's factor)
JITTER = 1.0  # the views' brightness/contrast jitter: contrast x(1 +- 0.6 JITTER), brightness +-0.3 JITTER
WARMUP = 0.1  # fraction of the steps with a linearly rising learning rate


def build_augment(channels: int, strength: float = 1.0, crop: float | None = None,
                  blur: float | None = None, jitter: float | None = None) -> keras.Sequential:
    """The random view generator (Keras preprocessing layers and the one-warp `augment.RandomAffine`)."""
    crop, blur = CROP if crop is None else crop, BLUR if blur is None else blur
    jitter = JITTER if jitter is None else jitter
    return keras.Sequential(
        [
            # resized crops (zoom in to `crop` of the side), shifts and small rotations, as one warp
            augment.RandomAffine(0.04 * strength, 0.15 * strength, (-(1.0 - crop) * strength, 0.1 * strength)),
            *([layers.RandomContrast(min(0.6 * jitter * strength, 0.9)),
               layers.RandomBrightness(0.3 * jitter * strength, value_range=(0.0, 1.0))] if jitter else []),
            *([layers.RandomGaussianBlur(blur, kernel_size=3, value_range=(0.0, 1.0))] if blur else []),
            layers.GaussianNoise(0.05 * strength),
        ],
        name="augment",
    )


def nt_xent(z1, z2, temperature: float = TEMPERATURE):
    """Normalized-temperature cross-entropy over the 2N views of a batch (SimCLR's NT-Xent).

    Under a tf.distribute strategy with several replicas, each replica's rows are
    contrasted with the views of *every* replica (all-gathered, as lightly's
    `gather_distributed` does), so the negatives are those of the global batch and the
    mean over replicas equals the one-device loss on the global batch."""
    z1, z2 = ops.cast(z1, "float32"), ops.cast(z2, "float32")  # mixed precision computes the rest in float32
    z1 = z1 / (ops.norm(z1, axis=1, keepdims=True) + 1e-8)
    z2 = z2 / (ops.norm(z2, axis=1, keepdims=True) + 1e-8)
    n = tf.shape(z1)[0]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        all1, all2 = context.all_gather(z1, axis=0), context.all_gather(z2, axis=0)
        sizes = context.all_gather(tf.reshape(n, [1]), axis=0)  # a shard's last batch may be smaller
        offset = tf.reduce_sum(sizes[: tf.cast(context.replica_id_in_sync_group, tf.int32)])
    else:
        all1, all2, offset = z1, z2, 0
    total = tf.shape(all1)[0]
    logits = tf.matmul(tf.concat([z1, z2], 0), tf.concat([all1, all2], 0), transpose_b=True) / temperature
    mine = offset + tf.range(n)  # this replica's first views among the gathered ones
    itself = tf.concat([mine, total + mine], 0)
    logits -= 1e9 * tf.one_hot(itself, 2 * total, dtype=logits.dtype)
    targets = tf.concat([total + mine, mine], 0)  # each view's other view
    return ops.mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))


def projector(widths, name: str = "projector") -> keras.Sequential:
    """The MLP on the pooled features: Dense + BatchNorm + ReLU for every width but the last."""
    hidden = [part for w in widths[:-1]
              for part in (layers.Dense(w, use_bias=False), BatchNormalization(), layers.Activation("relu"))]
    return keras.Sequential([*hidden, layers.Dense(widths[-1])], name=name)


class SimCLR(keras.Model):
    """Training wrapper: augment twice, encode, project, a two-view loss (NT-Xent by default).
    Only the encoder is kept."""

    def __init__(self, encoder, augment, projection=PROJECTION, temperature=TEMPERATURE, loss=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.augment, self.temperature = encoder, augment, temperature
        self.two_view_loss = loss  # (z1, z2) -> loss of the two views' projections; None: NT-Xent
        self.pool = layers.GlobalAveragePooling2D()
        self.projector = projector(projection)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def build(self, input_shape):
        features = self.encoder.compute_output_shape(tuple(input_shape))
        self.projector.build((input_shape[0], features[-1]))
        self.built = True

    def call(self, inputs, training=False):
        return self.embed(inputs, training)

    def embed(self, x, training):
        return self.projector(self.pool(self.encoder(x, training=training)), training=training)

    def trained(self) -> list:
        """The variables the optimizer updates."""
        return self.encoder.trainable_variables + self.projector.trainable_variables

    def views_loss(self, v1, v2, training):
        """The loss of two views of a batch: the two-view loss of their projections."""
        z1, z2 = self.embed(v1, training), self.embed(v2, training)
        return self.two_view_loss(z1, z2) if self.two_view_loss else nt_xent(z1, z2, self.temperature)

    def after_step(self) -> None:
        """What follows each optimizer step (nothing here; BYOL moves its target)."""

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        v1, v2 = self.augment(x, training=True), self.augment(x, training=True)
        loss = distribute.gradient_step(self.optimizer, self.trained(), lambda: self.views_loss(v1, v2, True))
        self.after_step()
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        self.loss_tracker.update_state(self.views_loss(self.augment(x, training=True),
                                                       self.augment(x, training=True), False))
        return {"loss": self.loss_tracker.result()}


def view_agreement(model: SimCLR, images: np.ndarray, batch_size: int) -> float:
    """Top-1 accuracy of finding each image's other view among the batch (a sanity metric)."""
    hits, total = 0, 0
    for start in range(0, len(images) - 1, batch_size):
        x = images[start : start + batch_size]
        if len(x) < 2:
            break
        z1 = np.array(model.embed(model.augment(x, training=True), False))
        z2 = np.array(model.embed(model.augment(x, training=True), False))
        z1 /= np.linalg.norm(z1, axis=1, keepdims=True) + 1e-8
        z2 /= np.linalg.norm(z2, axis=1, keepdims=True) + 1e-8
        hits += int((np.argmax(z1 @ z2.T, axis=1) == np.arange(len(x))).sum())
        total += len(x)
    return hits / max(total, 1)


def schedule(learning_rate: float, steps: int):
    """Linear warm-up over the first WARMUP of the steps, then cosine decay to 0 (a constant
    rate when the number of steps is unknown)."""
    if steps < 10:
        return learning_rate
    warmup = int(WARMUP * steps)
    return keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, warmup_target=learning_rate,
                                                  warmup_steps=warmup)


def views(shape, options: Options) -> keras.Sequential:
    """The view generator of `options` (its crop, blur and jitter, or the defaults)."""
    return build_augment(shape[-1], crop=options.crop, blur=options.blur, jitter=options.jitter)


def compiled(model: SimCLR, shape, options: Options) -> SimCLR:
    """A two-view model compiled with Adam on the warm-up + cosine schedule and built (so that
    a backup can be restored into it): what every two-view objective's `build` returns."""
    model.compile(optimizer=keras.optimizers.Adam(schedule(options.learning_rate, options.steps)))
    model.build((None, *shape))
    model.optimizer.build(model.trained())  # now: slots made in the step's first trace retrace it
    model.batch_size = options.batch_size
    return model


def build(encoder, blocks, shape, options: Options) -> SimCLR:
    return compiled(SimCLR(encoder, views(shape, options), projection=options.projector or PROJECTION,
                           temperature=options.temperature or TEMPERATURE), shape, options)


def callbacks(model, run_dir) -> list:
    return []


def report(model: SimCLR, train, val_images: np.ndarray) -> Report:
    batch = model.batch_size
    chance = 1.0 / max(min(batch, len(val_images)), 1)
    agreement = view_agreement(model, val_images, batch)
    warnings = []
    if agreement < 2 * chance:
        warnings.append(f"views of the same held-out image are matched only {agreement:.1%} of the time "
                        f"(chance {chance:.1%}); the features may be weak")
    views = np.clip(np.array(model.augment(val_images[:8], training=True)), 0.0, 1.0)
    # two views, each forward + backward (~3 forward passes)
    flops = 6 * (models.forward_flops(model.encoder) + models.forward_flops(model.projector))
    return Report(metrics={"view_agreement": agreement, "chance_agreement": chance, "train_flops_per_image": flops},
                  preview=views, preview_name="views.png", warnings=warnings)
