"""Label-preserving augmentation for training by gradient, and FixMatch's weak/strong views.

Built from Keras preprocessing layers, with rotation, shift and zoom drawn together and
applied as one warp (`RandomAffine`: one interpolation instead of three, 2.0 ms instead
of 6.3 ms for 256 32x32 images on 2 cores). They sit in front of the classifier in the
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

import math

import keras
from keras import layers, ops

from transfer import vocabulary

POLICIES = vocabulary.AUGMENT_POLICIES  # `--augment`; see above


class RandomAffine(layers.Layer):
    """Random rotation, shift and zoom about the centre, as one affine warp per image.

    The ranges are those of `RandomRotation(rotation)`, `RandomTranslation(translation,
    translation)` and `RandomZoom(zoom)` (a fraction of a full turn; of the height and
    width; a negative zoom zooms in, the aspect ratio is kept), drawn independently per
    image; pixels from outside the image are filled by `fill_mode`. Training only: at
    inference the images pass unchanged. Not saved in any artifact (training models only).
    """

    def __init__(self, rotation: float = 0.0, translation: float = 0.0, zoom: tuple[float, float] = (0.0, 0.0),
                 fill_mode: str = "constant", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.translation, self.zoom, self.fill_mode = rotation, translation, tuple(zoom), fill_mode
        self.seed_generator = keras.random.SeedGenerator(seed)
        # The warp (ImageProjectiveTransformV3) has no XLA kernel: like Keras's own RandomRotation,
        # a model holding this layer runs its step without XLA (Keras warns and turns jit_compile off).
        self.supports_jit = False

    def call(self, images, training=True):
        if not training:
            return images
        n = ops.shape(images)[0]
        angle = keras.random.uniform((n,), -self.rotation, self.rotation, seed=self.seed_generator) * 2 * math.pi
        scale = 1.0 + keras.random.uniform((n,), self.zoom[0], self.zoom[1], seed=self.seed_generator)
        shift = keras.random.uniform((n, 2), -self.translation, self.translation, seed=self.seed_generator)
        return ops.cast(affine(images, angle, scale, shift, self.fill_mode), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "translation": self.translation,
                "zoom": self.zoom, "fill_mode": self.fill_mode}


def affine(images, angle, scale, shift, fill_mode: str = "constant"):
    """Warp each image (bilinear): output pixel p samples the input at
    centre + scale * R(angle) (p - centre) - shift * (width, height); per-image angle
    (radians), scale and shift (fractions of the width and height, shape (n, 2))."""
    images = ops.cast(images, "float32")
    height, width = ops.cast(ops.shape(images)[1], "float32"), ops.cast(ops.shape(images)[2], "float32")
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1 = scale * ops.cos(angle), -scale * ops.sin(angle)
    b0, b1 = scale * ops.sin(angle), scale * ops.cos(angle)
    a2 = cx - a0 * cx - a1 * cy - shift[:, 0] * width
    b2 = cy - b0 * cx - b1 * cy - shift[:, 1] * height
    zeros = ops.zeros_like(a0)
    transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode=fill_mode)


def build(policy: str, strength: float = 1.0, name: str = "augment",
          intensity: bool = True) -> keras.Sequential | None:
    """The augmentation of `policy` (None for "none"); `strength` scales every range; without
    `intensity`, no contrast and brightness changes (the geometry alone)."""
    if policy == "none":
        return None
    s = strength
    stack = []
    if policy == "orientation-free":
        stack.append(layers.RandomFlip("horizontal_and_vertical"))
        rotation, fill = 0.5, "reflect"
    else:
        rotation, fill = 0.04 * s, "constant"
    stack.append(RandomAffine(rotation, 0.1 * s, (-0.1 * s, 0.1 * s), fill_mode=fill))
    if intensity:
        stack += [layers.RandomContrast(min(0.3 * s, 0.9)), layers.RandomBrightness(0.1 * s, value_range=(0.0, 1.0))]
    return keras.Sequential(stack, name=name)


def strong(policy: str, view: str = "full", name: str = "strong_augment") -> keras.Sequential:
    """FixMatch's strong view: twice the geometry and intensity ranges of `policy`, a
    shear, and a cutout (one erased rectangle, as in Sohn et al. 2020); `view` "geometry"
    leaves out the contrast and brightness changes (fine-tune --strong-view)."""
    base = build("label-preserving" if policy == "none" else policy, strength=2.0, name=name,
                 intensity=view != "geometry")
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
