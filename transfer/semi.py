"""Semi-supervised fine-tuning on the unlabeled pool: FixMatch (Sohn et al. 2020).

Each step takes a batch of B labeled images and mu*B unlabeled ones. The model's
prediction on a weak view of an unlabeled image is its pseudo-label, kept only when
its confidence reaches `threshold`; the loss is

    CE(labeled weak view, label) + weight * mean over unlabeled of [conf >= threshold] * CE(strong view, pseudo-label)

As the reference trains (`teacher="batch"`, the default): the labeled images, the weak
and the strong views of the unlabeled ones go through the network together in training
mode (BatchNorm's statistics over all of them); the pseudo-labels are the weak rows of
that pass, with no gradient. SGD with Nesterov momentum, weight decay, FixMatch's cosine
and the weights' moving average kept at the end (`optimizer`). `teacher="inference"`
reads the pseudo-labels from the network in inference mode (BatchNorm's moving
statistics) and leaves the weak views out of the trained pass, which saves a third of its
backward pass: the same accuracy on digits (10 labels/class: from scratch 99.3 and 97.6
on the pool's labels, reference form 99.3 and 97.4), but on animal silhouettes at 4
labels/class it was 1.2 points below a plain Keras FixMatch where the batch teacher is
0.1 below (3 seeds; `python benchmarks/semi_vs_keras.py --data animals`), at 0.8x the
time. With Adam and no weight average it was 3.3 below.

Every step draws B labeled images even when fewer are labeled: the labeled images
repeat within a step (each with its own weak view), as the reference's sampler draws
them with replacement, so the unlabeled batch stays mu*B at the lowest budgets (capping
B at the number of labels fed 10 labels' FixMatch 70 unlabeled images a step, not 224).

Distribution alignment (`align`, ReMixMatch's, in the form USB's hook computes it): the
teacher's probabilities are multiplied by target / running mean of the teacher's
probabilities over the unlabeled batches (momentum 0.999) and renormalized, before the
confidence and the pseudo-label are read from them. The target is uniform over the
classes that have a label. At one or two labels per class, FixMatch's teacher favours
the classes it learned first and pseudo-labels them ever more (confirmation bias);
alignment keeps the pseudo-labels spread over the classes as the target says.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from transfer import distribute, stream

STEPS_PER_EPOCH = 100  # a history row (and a chance to back up, see training.fit) every 100 steps
# FixMatch evaluates a moving average of the weights (0.999 over its 2**20 steps). Keras's average starts
# from the first step's weights, which keep a weight of EMA**(steps - 1): 0.999 would leave 13% of the
# barely trained network in after 2,000 steps; 0.99 leaves none.
EMA = 0.99


class FixMatch(keras.Model):
    """Training wrapper around a classifier (image -> class probabilities); only the
    classifier is kept."""

    def __init__(self, classifier, weak, strong, threshold: float = 0.95, weight: float = 1.0, align=None,
                 align_momentum: float = 0.999, teacher: str = "batch", **kwargs):
        super().__init__(**kwargs)
        self.classifier, self.weak, self.strong, self.teacher = classifier, weak, strong, teacher
        self.threshold, self.weight = float(threshold), float(weight)
        self.align_momentum = float(align_momentum)
        self.p_target = self.p_model = None
        if align is not None:  # the target class distribution: alignment on
            target = np.asarray(align, dtype="float32")
            self.p_target = ops.convert_to_tensor(target / target.sum())
            # The teacher's running mean probability; one value over the replicas (their mean).
            self.p_model = self.add_weight(shape=target.shape, initializer=keras.initializers.Constant(self.p_target),
                                           trainable=False, aggregation="mean", name="p_model")
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
        strong_u = self.strong(x_u, training=True)
        n_l, n_u = ops.shape(x_l)[0], ops.shape(x_u)[0]
        if self.teacher == "batch":  # the reference: every view in one trained pass, BatchNorm over all of them
            p = self.classifier(ops.concatenate([weak_l, weak_u, strong_u], axis=0), training=training)
            p_l, p_weak, p_strong = p[:n_l], ops.stop_gradient(p[n_l:n_l + n_u]), p[n_l + n_u:]
        else:  # inference mode: BatchNorm's moving statistics, no update, no backward pass
            p_weak = ops.stop_gradient(self.classifier(weak_u, training=False))
            p = self.classifier(ops.concatenate([weak_l, strong_u], axis=0), training=training)
            p_l, p_strong = p[:n_l], p[n_l:]
        if self.p_model is not None:
            p_weak = self.aligned(p_weak)
        labeled = ops.mean(keras.losses.sparse_categorical_crossentropy(y_l, p_l))
        mask = ops.cast(ops.max(p_weak, axis=1) >= self.threshold, p.dtype)
        pseudo = ops.argmax(p_weak, axis=1)
        unlabeled = ops.mean(mask * keras.losses.sparse_categorical_crossentropy(pseudo, p_strong))
        return labeled + self.weight * unlabeled, labeled, unlabeled, mask, p_l

    def aligned(self, p_weak):
        """The teacher's probabilities aligned to the target distribution (the running mean updated first)."""
        m = self.align_momentum
        self.p_model.assign(m * self.p_model + (1.0 - m) * ops.mean(p_weak, axis=0))
        p = p_weak * self.p_target / ops.maximum(self.p_model, 1e-6)
        return p / ops.maximum(ops.sum(p, axis=1, keepdims=True), 1e-12)

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
    """((labeled images, labels), unlabeled images) batches of `batch_size` and mu times as
    many, both endless streams of reshuffled passes in full batches (one batch shape: the
    step is traced once; fewer labels than `batch_size` repeat within a batch), for `fit`
    under the current strategy; the unlabeled pool is streamed (never all in memory)."""

    def make(b, shard):
        # Each worker draws from every labeled image (there are few) and from its shard of the pool.
        labeled = train.stream(b, seed, with_labels=True)
        unlabeled = pool.stream(mu * b, seed + 1, shard=shard)
        return tf.data.Dataset.zip((labeled, unlabeled)).prefetch(tf.data.AUTOTUNE)

    return distribute.batches(make, batch_size, steps_per_epoch * batch_size)


@keras.saving.register_keras_serializable(package="transfer")
class FixMatchCosine(keras.optimizers.schedules.LearningRateSchedule):
    """FixMatch's learning rate: lr * cos(7 pi k / (16 K)) at step k of K (from lr down to 0.2 lr);
    a Keras schedule, so a resumed run continues it from the optimizer's step count."""

    def __init__(self, learning_rate: float, steps: int):
        self.learning_rate, self.steps = float(learning_rate), max(int(steps), 1)

    def __call__(self, step):
        k = ops.minimum(ops.cast(step, "float32"), float(self.steps))
        return self.learning_rate * ops.cos(7.0 * math.pi * k / (16.0 * self.steps))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "steps": self.steps}


def optimizer(learning_rate: float, steps: int, ema: float = EMA):
    """FixMatch's optimizer, as the reference trains: SGD with Nesterov momentum 0.9, weight decay
    5e-4, FixMatch's cosine; the weights' moving average (`ema`) replaces them when the fit ends,
    as FixMatch evaluates it."""
    return keras.optimizers.SGD(FixMatchCosine(learning_rate, steps), momentum=0.9, nesterov=True,
                                weight_decay=5e-4, use_ema=True, ema_momentum=ema)
