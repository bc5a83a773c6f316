"""VICReg (Bardes, Ponce and LeCun, ICLR 2022): two random views of each image are pulled
together (invariance), while every dimension of the embedding keeps a standard deviation of
at least 1 over the batch (variance) and the dimensions stay decorrelated (covariance). No
negatives, so it needs no large batch: suited to small encoders on CPU budgets.

The loss is lightly's and the authors' formulation (`vicreg_loss`); the views are the
contrastive objective's (the same augmentations), the expander an MLP with BatchNorm, and
the features kept are those before it.
"""

from __future__ import annotations

from keras import ops

from transfer.objectives import contrastive
from transfer.objectives.base import Options, Report

NAME = "vicreg"
LEARNING_RATE = 1e-3
VALIDATES = True
TWO_VIEW = True
EXPANDER = (512, 512, 512)
LAMBDA, MU, NU, EPS = 25.0, 25.0, 1.0, 1e-4


def _variance(z):
    std = ops.sqrt(ops.var(z, axis=0) * (ops.cast(ops.shape(z)[0], z.dtype) / (ops.cast(ops.shape(z)[0], z.dtype) - 1))
                   + EPS)  # the unbiased variance, as torch.var
    return ops.mean(ops.relu(1.0 - std))


def _covariance(z):
    n, d = ops.cast(ops.shape(z)[0], z.dtype), ops.cast(ops.shape(z)[1], z.dtype)
    z = z - ops.mean(z, axis=0, keepdims=True)
    cov = ops.matmul(ops.transpose(z), z) / (n - 1.0)
    off = cov * (1.0 - ops.eye(ops.shape(z)[1], dtype=z.dtype))
    return ops.sum(off * off) / d


def vicreg_loss(z1, z2, lam: float = LAMBDA, mu: float = MU, nu: float = NU):
    """lam * mean((z1 - z2)^2) + mu * (v(z1) + v(z2)) / 2 + nu * (c(z1) + c(z2)), with v the mean
    hinge of 1 - std per dimension and c the squared off-diagonal covariances over the width."""
    z1, z2 = ops.cast(z1, "float32"), ops.cast(z2, "float32")
    invariance = ops.mean(ops.square(z1 - z2))
    variance = 0.5 * (_variance(z1) + _variance(z2))
    covariance = _covariance(z1) + _covariance(z2)
    return lam * invariance + mu * variance + nu * covariance


def build(encoder, blocks, shape, options: Options) -> contrastive.SimCLR:
    return contrastive.compiled(contrastive.SimCLR(encoder, contrastive.views(shape, options),
                                                   projection=options.projector or EXPANDER, loss=vicreg_loss),
                                shape, options)


def callbacks(model, run_dir) -> list:
    return []


def report(model, train, val_images) -> Report:
    return contrastive.report(model, train, val_images)
