"""Fitting linear heads exactly: multinomial logistic regression by L-BFGS (scikit-learn).

On a few hundred labeled examples a convex solve beats stochastic training of
the same softmax layer: it converges fully, needs no epochs or learning rate,
and is repeatable. The solution is written into a Keras `Dense` layer, so the
classifier is an ordinary Keras model.
"""

from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

PROBE_C = 1.0  # inverse L2 strength on standardized features (scikit-learn's default)


def standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of x's columns, as float32."""
    return x.mean(axis=0).astype("float32"), x.var(axis=0).astype("float32")


CS = np.logspace(-4, 2, 7)  # the L2 strengths cross-validation chooses from


ABSENT = -1e4  # the bias of a class no training label has: its probability underflows to 0


def cross_validated(z: np.ndarray, labels: np.ndarray, num_classes: int):
    """(weights, bias, C, mean CV accuracy) of the logistic regression whose inverse L2
    strength C is chosen by stratified k-fold CV (k = min(5, smallest class)); with
    fewer than 2 examples in some class, C = PROBE_C and no score (None)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    present = np.unique(labels)
    if len(present) < 2:  # every label of one class (a blind draw can do that): predict it
        bias = np.full(num_classes, ABSENT, np.float32)
        bias[present] = 0.0
        return np.zeros((z.shape[1], num_classes), np.float32), bias, PROBE_C, None
    folds = int(np.bincount(labels, minlength=num_classes)[present].min())
    # One BLAS thread: on small problems, BLAS threads competing with each other and with
    # TensorFlow's made the solve 20x slower on 2 cores (4.8 s -> 0.23 s, the same solution).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # scikit-learn announces future defaults loudly
        if folds >= 2:
            clf = LogisticRegressionCV(Cs=CS, cv=min(folds, 5), max_iter=3000)
            clf.fit(z, labels)
            c, score = float(clf.C_[0]), float(np.mean(next(iter(clf.scores_.values())), axis=0).max())
        else:
            clf, c, score = LogisticRegression(C=PROBE_C, max_iter=3000).fit(z, labels), PROBE_C, None
    weights, bias = _softmax_form(clf.coef_, clf.intercept_)
    if len(present) < num_classes:  # classes without a label are never predicted
        full_w, full_b = np.zeros((z.shape[1], num_classes), np.float32), np.full(num_classes, ABSENT, np.float32)
        full_w[:, present], full_b[present] = weights, bias
        weights, bias = full_w, full_b
    return weights, bias, c, score


def _softmax_form(coef, bias):
    if coef.shape[0] == 1:  # two classes: one row; the softmax equivalent splits it symmetrically
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    return coef.T.astype("float32"), bias.astype("float32")
