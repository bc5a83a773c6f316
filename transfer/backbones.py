"""ImageNet backbones from `keras.applications` as encoders: `--encoder keras:NAME --weights
imagenet|PATH|none`.

A backbone becomes an ordinary encoder model (image -> last feature map) that takes the
toolkit's images as they are, floats in [0, 1] at the data's size and channels, and does
its own input handling inside the model, so that everything downstream (the readouts, the
head, `predict`, `export`) sees one model and nothing can be forgotten at inference:

    block0_rgb     gray images repeated to 3 channels (the backbones take RGB)
    block0_resize  images smaller than the backbone's minimum resized up (bilinear)
    block0_scale   [0, 1] scaled to the range the backbone's `preprocess_input` expects of
                   0-255 images ([0, 255] for the families that normalize inside the model,
                   [-1, 1] for ResNet50V2)
    block1_backbone  the keras.applications model, include_top=False
    block1_out     its last feature map

The encoder counts as one block: `--unfreeze-top 1` unfreezes the whole backbone with its
BatchNorm layers kept in inference mode, the second phase of the Keras transfer-learning
guide (head first on frozen features, then everything at a low learning rate).

Weights: `imagenet` is fetched by Keras into its cache (~/.keras/models) the first time, which
needs the internet; offline without the cached file it is one error that says where to place
it. `PATH` loads a weights file of the backbone without its top (`.weights.h5`, or the
`*_notop.h5` Keras downloads). `none` starts from random weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from transfer.architectures import Block
from transfer.errors import TransferError

PREFIX = "keras:"


@dataclass(frozen=True)
class Family:
    """A backbone: its keras.applications constructor, smallest input side, and the affine map
    (scale, offset) from [0, 1] to what its `preprocess_input` makes of 0-255 images."""

    app: str
    min_size: int
    scale: float
    offset: float
    input_range: str


_RAW = (255.0, 0.0, "[0, 255] (it normalizes inside the model)")
BACKBONES = {
    "mobilenetv3small": Family("MobileNetV3Small", 32, *_RAW),
    "mobilenetv3large": Family("MobileNetV3Large", 32, *_RAW),
    "efficientnetb0": Family("EfficientNetB0", 32, *_RAW),
    "efficientnetv2b0": Family("EfficientNetV2B0", 32, *_RAW),
    "resnet50v2": Family("ResNet50V2", 32, 2.0, -1.0, "[-1, 1]"),
    "convnexttiny": Family("ConvNeXtTiny", 32, *_RAW),
}
WEIGHTS_CHOICES = ("imagenet", "none")  # or a path to a weights file


def is_backbone(spec) -> bool:
    return str(spec or "").lower().startswith(PREFIX)


def name_of(spec: str) -> str:
    """The backbone's key in BACKBONES (lower case) for `keras:NAME`; an unknown name is refused."""
    key = str(spec)[len(PREFIX):].strip().lower().replace("_", "").replace("-", "")
    if key not in BACKBONES:
        raise TransferError(f"unknown backbone {spec!r}; use keras: with one of "
                            + ", ".join(f.app for f in BACKBONES.values()))
    return key


def check_weights(spec: str, weights: str | None) -> None:
    """Before anything loads: a backbone needs --weights, and a weights file must exist."""
    if weights is None:
        raise TransferError(f"--encoder {spec} needs --weights: imagenet (downloaded once by Keras when online), "
                            "a weights file, or none (random weights)")
    if weights not in WEIGHTS_CHOICES and not Path(weights).is_file():
        raise TransferError(f"--weights {weights}: no such file (use imagenet, none, or a weights file of the "
                            "backbone without its top)")


def origin(weights: str | None) -> str | None:
    """What the row and manifest call the weights' source: imagenet, none, or the file's name."""
    if weights in (None, "none", "imagenet"):
        return weights
    return Path(weights).name


def objective(weights: str | None) -> str | None:
    """What a backbone's weights bring, as the row's objective: imagenet, weights-file (a file
    the user gave), or None (random weights: a baseline without pretraining)."""
    return None if weights in (None, "none") else "imagenet" if weights == "imagenet" else "weights-file"


def input_handling(key: str, image_size: int, channels: int) -> str:
    """The preprocessing done inside the model, in words (for manifests and exports)."""
    family, size = BACKBONES[key], max(image_size, BACKBONES[key].min_size)
    steps = (["gray repeated to 3 channels"] if channels == 1 else []) + (
        [f"resized up to {size}x{size} (bilinear)"] if size != image_size else [])
    return ", ".join(steps + [f"[0, 1] scaled to {family.input_range} as {family.app}'s preprocess_input expects"])


def build(spec: str, weights: str, image_size: int, channels: int):
    """The encoder model of backbone `spec` (see the module docstring) for square images of
    `image_size` with 1 or 3 `channels`, its weights loaded from `weights`."""
    import keras
    from keras import layers

    key = name_of(spec)
    family = BACKBONES[key]
    if channels not in (1, 3):
        raise TransferError(f"{family.app} takes gray or RGB images; these have {channels} channels")
    size = max(int(image_size), family.min_size)
    inputs = keras.Input((image_size, image_size, channels), name="image")
    x = inputs
    if channels == 1:
        x = layers.Concatenate(name="block0_rgb")([x, x, x])
    if size != image_size:
        x = layers.Resizing(size, size, interpolation="bilinear", name="block0_resize")(x)
    x = layers.Rescaling(family.scale, family.offset, name="block0_scale")(x)
    backbone = _application(family, "imagenet" if weights == "imagenet" else None, (size, size, 3))
    if weights not in WEIGHTS_CHOICES:
        try:
            backbone.load_weights(weights)
        except Exception as exc:  # Keras raises ValueError, OSError or h5py's errors for a wrong file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TransferError(f"--weights {weights}: not weights of {family.app} without its top ({reason})") from None
    backbone.name = "block1_backbone"
    out = layers.Identity(name="block1_out")(backbone(x))
    return keras.Model(inputs, out, name="encoder")


def decoder_blocks(encoder) -> list:
    """Blocks for the autoencoder objectives' decoder (`models.build_decoder` mirrors them) from
    a backbone encoder: one upsampling by 2 for each halving between the backbone's input and its
    last map, widths halving towards the image (its final resize absorbs the rest)."""
    inner = encoder.get_layer("block1_backbone")
    size, out = int(inner.input.shape[1]), max(int(encoder.output.shape[1]), 1)
    halvings = max(1, round(math.log2(size / out)))
    return [Block(filters=max(16, 256 >> i), strides=2, pool="none") for i in range(halvings)]


def _application(family: Family, weights: str | None, input_shape):
    """keras.applications' backbone; a download of its ImageNet weights that fails is one error
    that says where the file goes on an offline machine."""
    import keras

    constructor = getattr(keras.applications, family.app)
    try:
        return constructor(include_top=False, weights=weights, input_shape=input_shape)
    except Exception as exc:
        if weights != "imagenet":
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TransferError(
            f"the ImageNet weights of {family.app} could not be fetched ({reason}). Offline, download its "
            f"'..._notop' weights file on a machine with internet (keras.applications.{family.app}(include_top=False, "
            "weights='imagenet') puts it in ~/.keras/models/) and copy it into ~/.keras/models/ here, or pass "
            "--weights PATH") from None
