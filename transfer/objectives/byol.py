"""BYOL (Grill et al., NeurIPS 2020): an online network (encoder, projector, predictor) learns
to predict, from one random view of an image, the projection of another view made by a target
network: the same encoder and projector with weights that follow the online ones as a moving
average. No negatives, so it needs no large batch.

As lightly's and solo-learn's BYOL: the symmetrized loss 2 - 2 cos(prediction, target
projection), averaged over both directions; the target's momentum rising from `TAU` to 1 over
the run on a cosine; the target computed in training mode (BatchNorm on the batch's own
statistics) with no gradient. The views are the contrastive objective's (the same
augmentations), the optimizer its Adam with warm-up and cosine decay; the features kept are
the online encoder's, before the projector.

The target weights are variables of the training model (averaged over replicas under a
tf.distribute strategy, where every replica computes the same update), and the target is the
online encoder and projector run through `stateless_call` with them: no second copy of the
layers.
"""

from __future__ import annotations

import math

from keras import ops

from transfer import models
from transfer.objectives import contrastive
from transfer.objectives.base import Options, Report

NAME = "byol"
LEARNING_RATE = 1e-3
VALIDATES = True
TWO_VIEW = True
PROJECTION = (512, 128)  # the projector's widths; the predictor is (PREDICTOR_HIDDEN, PROJECTION[-1])
PREDICTOR_HIDDEN = 512
TAU = 0.99  # the target's momentum at the start (solo-learn's for runs of a few thousand steps)


def byol_loss(p1, z2, p2, z1):
    """0.5 * [(2 - 2 cos(p1, z2)) + (2 - 2 cos(p2, z1))], each cosine averaged over the batch:
    the online predictions `p` of one view against the target projections `z` of the other."""

    def cos(p, z):
        p, z = ops.cast(p, "float32"), ops.cast(z, "float32")
        p = p / (ops.norm(p, axis=1, keepdims=True) + 1e-8)
        z = z / (ops.norm(z, axis=1, keepdims=True) + 1e-8)
        return ops.mean(ops.sum(p * z, axis=1))

    return 2.0 - cos(p1, z2) - cos(p2, z1)


def momentum(step, steps: int, tau: float = TAU):
    """The target's momentum at `step` of `steps`: 1 - (1 - tau) (cos(pi step / steps) + 1) / 2
    (`tau` throughout when the number of steps is unknown)."""
    if steps < 1:
        return ops.convert_to_tensor(tau, "float32")
    progress = ops.minimum(ops.cast(step, "float32") / float(steps), 1.0)
    return 1.0 - (1.0 - tau) * (ops.cos(math.pi * progress) + 1.0) / 2.0


class BYOL(contrastive.SimCLR):
    """Training wrapper: two views, the online encoder, projector and predictor against the
    target (the moving average of the online encoder and projector). Only the encoder is kept."""

    def __init__(self, encoder, augment, projection=PROJECTION, steps: int = 0, tau: float = TAU, **kwargs):
        super().__init__(encoder, augment, projection=projection, **kwargs)
        self.predictor = contrastive.projector((PREDICTOR_HIDDEN, projection[-1]), name="predictor")
        self.steps, self.tau = int(steps), float(tau)
        self.target_weights = []

    def build(self, input_shape):
        super().build(input_shape)
        self.predictor.build((input_shape[0], self.projector.layers[-1].units))
        online = self._followed()
        # One value over the replicas (their mean: every replica computes the same update).
        self.target_weights = [self.add_weight(shape=v.shape, initializer="zeros", trainable=False,
                                               aggregation="mean", name=f"target_{i}")
                               for i, v in enumerate(online)]
        for target, v in zip(self.target_weights, online):
            target.assign(v)  # the target starts as the online network

    def _followed(self) -> list:
        """The online variables the target follows: the encoder's and the projector's."""
        return [*self.encoder.trainable_variables, *self.projector.trainable_variables]

    def target_embed(self, x):
        """The target network's projection of `x` (training-mode BatchNorm, no gradient)."""
        n = len(self.encoder.trainable_variables)
        values = [ops.convert_to_tensor(t) for t in self.target_weights]
        features, _ = self.encoder.stateless_call(
            values[:n], [ops.convert_to_tensor(v) for v in self.encoder.non_trainable_variables], x, training=True)
        z, _ = self.projector.stateless_call(
            values[n:], [ops.convert_to_tensor(v) for v in self.projector.non_trainable_variables],
            self.pool(features), training=True)
        return ops.stop_gradient(z)

    def views_loss(self, v1, v2, training):
        """BYOL's loss of two views: each one's online prediction against the other's target projection."""
        p1 = self.predictor(self.embed(v1, training), training=training)
        p2 = self.predictor(self.embed(v2, training), training=training)
        return byol_loss(p1, self.target_embed(v2), p2, self.target_embed(v1))

    def trained(self) -> list:
        return self._followed() + self.predictor.trainable_variables

    def after_step(self) -> None:
        """The target follows the online network: an exponential moving average at the momentum
        of this step."""
        tau = momentum(self.optimizer.iterations, self.steps, self.tau)
        for target, v in zip(self.target_weights, self._followed()):
            target.assign(tau * target + (1.0 - tau) * ops.cast(v, target.dtype))


def build(encoder, blocks, shape, options: Options) -> BYOL:
    return contrastive.compiled(BYOL(encoder, contrastive.views(shape, options),
                                     projection=options.projector or PROJECTION, steps=options.steps), shape, options)


def callbacks(model, run_dir) -> list:
    return []


def report(model: BYOL, train, val_images) -> Report:
    out = contrastive.report(model, train, val_images)
    # two views, each online forward + backward (~3 forward passes) and a target forward
    out.metrics["train_flops_per_image"] = 2 * (4 * (models.forward_flops(model.encoder)
                                                     + models.forward_flops(model.projector))
                                                + 3 * models.forward_flops(model.predictor))
    return out
