"""Label-preserving augmentation for training by gradient, and FixMatch's weak/strong views.

Built from Keras preprocessing layers only. They sit in front of the classifier in the
*training* model (`training_model`), never in the saved classifier, so `predict` sees
exactly the images it is given.

Policies (`--augment`):
    label-preserving: small shifts, rotations and zooms, contrast and brightness
        jitter; no flips (they change digits, text and most objects). The default.
    orientation-free: also flips and turns by any angle (textures, satellite tiles,
        micrographs: images with no "up").
    none: the images as they are.

Images are floats in [0, 1].
"""

from __future__ import annotations

import keras
from keras import layers


def build(policy: str, strength: float = 1.0, name: str = "augment") -> keras.Sequential | None:
    """The augmentation of `policy` (None for "none"); `strength` scales every range."""
    if policy == "none":
        return None
    s = strength
    stack = []
    if policy == "orientation-free":
        stack += [layers.RandomFlip("horizontal_and_vertical"), layers.RandomRotation(0.5, fill_mode="reflect")]
        fill = "reflect"
    else:
        stack.append(layers.RandomRotation(0.04 * s, fill_mode="constant"))
        fill = "constant"
    stack += [
        layers.RandomTranslation(0.1 * s, 0.1 * s, fill_mode=fill),
        layers.RandomZoom((-0.1 * s, 0.1 * s), fill_mode=fill),
        layers.RandomContrast(min(0.3 * s, 0.9)),
        layers.RandomBrightness(0.1 * s, value_range=(0.0, 1.0)),
    ]
    return keras.Sequential(stack, name=name)


def strong(policy: str, name: str = "strong_augment") -> keras.Sequential:
    """FixMatch's strong view: twice the geometry and intensity ranges of `policy`, a
    shear, and a cutout (one erased rectangle, as in Sohn et al. 2020)."""
    base = build("label-preserving" if policy == "none" else policy, strength=2.0, name=name)
    base.add(layers.RandomShear(0.15, 0.15, fill_mode="constant" if policy != "orientation-free" else "reflect"))
    base.add(layers.RandomErasing(factor=1.0, scale=(0.05, 0.25), fill_value=0.5, value_range=(0.0, 1.0)))
    return base


def training_model(classifier: keras.Model, augment: keras.Sequential | None) -> keras.Model:
    """The classifier with `augment` in front: trained in its place, shares its weights,
    and is discarded afterwards (the saved classifier has no augmentation)."""
    if augment is None:
        return classifier
    inputs = keras.Input(classifier.input.shape[1:], name="image")
    return keras.Model(inputs, classifier(augment(inputs)), name="augmented_classifier")
