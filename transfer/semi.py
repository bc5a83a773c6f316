"""Semi-supervised fine-tuning on the unlabeled pool: FixMatch (Sohn et al. 2020).

Each step takes a batch of B labeled images and mu*B unlabeled ones. The model's
prediction on a weak view of an unlabeled image is its pseudo-label, kept only when
its confidence reaches `threshold`; the loss is

    CE(labeled weak view, label) + weight * mean over unlabeled of [conf >= threshold] * CE(strong view, pseudo-label)

The pseudo-labels come from the model in inference mode (BatchNorm's moving
statistics) with no gradient: only the labeled images and the strong views go through
the trained forward pass and its backward pass. The reference passes the weak views
through it too (one batch, so that BatchNorm sees every view together), and so spends a
third of the backward pass on rows whose gradient is zero. Measured on digits (10
labels/class, 2,000 steps, seeds 0 and 1), accuracy on the unlabeled pool (its labels,
never the test split) was the same within the seed noise: from a contrastive encoder
99.4 and 98.7 (reference form: 99.4 and 99.2), from scratch 99.3 and 97.6 (99.3 and
97.4), at 25% less time per step in `transfer fine-tune` (and 1.75x fewer ms per step
in `python benchmarks/fixmatch_step.py`, each form in its own process).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from transfer import distribute, stream

STEPS_PER_EPOCH = 100  # a history row (and a chance to back up, see training.fit) every 100 steps


class FixMatch(keras.Model):
    """Training wrapper around a classifier (image -> class probabilities); only the
    classifier is kept."""

    def __init__(self, classifier, weak, strong, threshold: float = 0.95, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.classifier, self.weak, self.strong = classifier, weak, strong
        self.threshold, self.weight = float(threshold), float(weight)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "labeled_loss", "unlabeled_loss", "mask_rate", "accuracy")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        self.built = True  # the classifier is built; the augmentation layers have no weights

    def call(self, inputs, training=False):
        if isinstance(inputs, (tuple, list)):  # a training batch's (labeled images, labels)
            inputs = inputs[0]
        return self.classifier(inputs, training=training)

    def losses_of(self, x_l, y_l, x_u, training: bool = True):
        """(total, labeled, unlabeled loss, mask, labeled predictions) on one batch, by the formula above."""
        weak_l = self.weak(x_l, training=True) if self.weak is not None else x_l
        weak_u = self.weak(x_u, training=True) if self.weak is not None else x_u
        p_weak = ops.stop_gradient(self.classifier(weak_u, training=False))  # the teacher: no BatchNorm update
        strong_u = self.strong(x_u, training=True)
        n_l = ops.shape(x_l)[0]
        p = self.classifier(ops.concatenate([weak_l, strong_u], axis=0), training=training)
        p_l, p_strong = p[:n_l], p[n_l:]
        labeled = ops.mean(keras.losses.sparse_categorical_crossentropy(y_l, p_l))
        mask = ops.cast(ops.max(p_weak, axis=1) >= self.threshold, p.dtype)
        pseudo = ops.argmax(p_weak, axis=1)
        unlabeled = ops.mean(mask * keras.losses.sparse_categorical_crossentropy(pseudo, p_strong))
        return labeled + self.weight * unlabeled, labeled, unlabeled, mask, p_l

    def train_step(self, data):
        (x_l, y_l), x_u = data
        loss, labeled, unlabeled, mask, p_l = distribute.gradient_step(
            self.optimizer, self.classifier.trainable_variables, lambda: self.losses_of(x_l, y_l, x_u))
        hits = ops.cast(ops.equal(ops.cast(ops.argmax(p_l, axis=1), "int32"), ops.cast(y_l, "int32")), "float32")
        for name, value in (("loss", loss), ("labeled_loss", labeled), ("unlabeled_loss", unlabeled),
                            ("mask_rate", ops.mean(mask)), ("accuracy", ops.mean(hits))):
            self.trackers[name].update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}


def batches(train: stream.ImageSet, pool: stream.ImageSet, batch_size: int, mu: int, seed: int,
            steps_per_epoch: int):
    """((labeled images, labels), unlabeled images) batches, both endless streams of
    reshuffled passes in full batches (one batch shape: the step is traced once), for `fit`
    under the current strategy; the unlabeled pool is streamed (never all in memory)."""
    batch_size = min(batch_size, len(train))

    def make(b, shard):
        # Each worker draws from every labeled image (there are few) and from its shard of the pool.
        labeled = train.stream(b, seed, with_labels=True)
        unlabeled = pool.stream(mu * b, seed + 1, shard=shard)
        return tf.data.Dataset.zip((labeled, unlabeled)).prefetch(tf.data.AUTOTUNE)

    return distribute.batches(make, batch_size, steps_per_epoch * batch_size), batch_size


def schedule(learning_rate: float, steps: int):
    """Cosine decay over the run (FixMatch's schedule, as a Keras schedule so a resumed run continues it)."""
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1), alpha=0.0)
