"""Keras's BatchNormalization, trained through TensorFlow's fused kernel.

Keras 3 normalizes a batch with separate moment, subtract, scale and shift ops
(`ops.moments`, `ops.batch_normalization`); on a CPU these memory-bound ops cost
more than the convolutions of a small encoder's first block: measured on 2 cores,
forward + backward of the `small` preset on 512 images of 32x32 took 173 ms, 106 ms
with `FusedBatchNormV3` (the step TensorFlow's oneDNN kernels and Grappler fuse).

The layer here is the built-in one with only the training-mode arithmetic
replaced (same variables, same config, the same results up to float rounding;
`tests/test_models.py` compares outputs, gradients and moving statistics). It is
saved as `keras.layers.BatchNormalization`, so every artifact holds built-in
layers only and loads in plain Keras; `adopt` gives the fused arithmetic back to
the BatchNormalization layers of a loaded model.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from transfer import internals

PUBLIC_NAME = "keras.layers.BatchNormalization"


class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, fused in training when it can be (4-D input,
    channels last, centre and scale, no mask, renorm or cross-replica statistics);
    anything else, and inference, is the built-in code."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")  # statistics in float32, as the built-in layer computes them
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"), epsilon=self.epsilon, is_training=True
        )
        # The kernel returns the unbiased variance; Keras's moving average takes the biased one.
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        momentum = tf.cast(self.momentum, "float32")
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        return (mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3) and self.center and self.scale
                and not self.renorm and not self.synchronized)


# Saved under the built-in's public name (its config is the built-in's), so artifacts need no custom class.
internals.save_as(BatchNormalization, PUBLIC_NAME)


def adopt(model: keras.Model) -> int:
    """Give the built-in BatchNormalization layers of `model` (loaded from a file) the fused
    training arithmetic; the layers keep their variables. Returns how many changed."""
    return internals.adopt_class(model, keras.layers.BatchNormalization, BatchNormalization)
