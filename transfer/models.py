"""Encoders (the pretrained "bottom layers"), decoders, autoencoders, classifiers.

Encoders are built from `transfer.architectures.Block` lists. Every layer is named `block{i}_...`; the last layer of block i is
`block{i}_out`, so readouts can tap any block. Only built-in Keras layers are
used, so saved models load with `safe_mode=True`.
"""

from __future__ import annotations

import keras
from keras import layers

from transfer.architectures import READOUTS, Block, block_shapes
from transfer.layers import BatchNormalization
from transfer.errors import TransferError

BN_MOMENTUM = 0.9  # 0.99 needs thousands of steps to settle; few-label runs take hundreds
VARIANCE_FLOOR = 1e-3  # features (or pixels) constant on the few training images must not blow up


def conv_block(x, block: Block, name: str):
    """Apply one block to tensor x; every layer is named `{name}_...`, the last `{name}_out`."""
    shortcut = x
    for j in range(1, block.convs + 1):
        x = layers.Conv2D(
            block.filters,
            block.kernel_size,
            strides=block.strides if j == 1 else 1,
            padding=block.padding,
            use_bias=not block.batch_norm,
            kernel_initializer="he_normal" if block.activation == "relu" else "glorot_uniform",
            name=f"{name}_conv{j}",
        )(x)
        if block.batch_norm:
            x = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{j}")(x)
        if not (block.residual and j == block.convs):
            x = layers.Activation(block.activation, name=f"{name}_act{j}")(x)
    if block.residual:
        if shortcut.shape[1:] != x.shape[1:]:
            shortcut = layers.Conv2D(
                block.filters, 1, strides=block.strides, padding="same", use_bias=not block.batch_norm,
                name=f"{name}_proj",
            )(shortcut)
            if block.batch_norm:
                shortcut = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
            if shortcut.shape[1:] != x.shape[1:]:
                raise TransferError(f"{name}: a residual block needs padding='same'")
        x = layers.Add(name=f"{name}_add")([x, shortcut])
        x = layers.Activation(block.activation, name=f"{name}_act{block.convs}")(x)
    if block.pool == "max":
        x = layers.MaxPooling2D(block.pool_size, name=f"{name}_pool")(x)
    elif block.pool == "avg":
        x = layers.AveragePooling2D(block.pool_size, name=f"{name}_pool")(x)
    return layers.Identity(name=f"{name}_out")(x)


def build_encoder(input_shape: tuple[int, int, int], blocks: list[Block], arch: str = "custom") -> keras.Model:
    """The conv blocks as a named model `encoder`: image -> last block's feature map."""
    if input_shape[0] != input_shape[1]:
        raise TransferError(f"encoders take square images. Received: input_shape={input_shape}")
    block_shapes(blocks, input_shape[0], arch)
    for block in blocks:
        try:
            keras.activations.get(block.activation)
        except ValueError:
            raise TransferError(f"unknown activation {block.activation!r}; use a Keras name such as relu, "
                                "tanh, gelu, elu, leaky_relu") from None
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, block in enumerate(blocks, start=1):
        x = conv_block(x, block, f"block{i}")
    return keras.Model(inputs, x, name="encoder")


def block_count(encoder: keras.Model) -> int:
    """How many blocks an encoder has (its `block{i}_out` layers)."""
    return sum(1 for layer in encoder.layers if layer.name.endswith("_out") and layer.name.startswith("block"))


def build_decoder(encoder: keras.Model, blocks: list[Block], channels: int) -> keras.Model:
    """Mirror of the encoder: transposed convs undo each block's downsampling.

    A final `Resizing` absorbs what `valid` padding removed, and a sigmoid conv
    gives images in [0, 1].
    """
    feature_shape = tuple(encoder.output.shape[1:])
    height = encoder.input.shape[1]
    inputs = keras.Input(feature_shape, name="features")
    x = inputs
    widths = [b.filters for b in blocks[:-1]][::-1] + [max(blocks[0].filters // 2, 8)]
    for i, (block, width) in enumerate(zip(reversed(blocks), widths), start=1):
        factor = block.strides * (block.pool_size if block.pool != "none" else 1)
        x = layers.Conv2DTranspose(
            width, 3, strides=factor, padding="same", use_bias=False, name=f"up{i}_deconv"
        )(x)
        x = BatchNormalization(momentum=BN_MOMENTUM, name=f"up{i}_bn")(x)
        x = layers.Activation("relu", name=f"up{i}_act")(x)
    if x.shape[1] != height:
        x = layers.Resizing(height, height, interpolation="bilinear", name="resize")(x)
    outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="reconstruction",
                            dtype="float32")(x)  # float32 under mixed precision: the loss needs it
    return keras.Model(inputs, outputs, name="decoder")


def build_features(encoder: keras.Model, readout: str, frozen: bool,
                   projector: keras.Model | None = None) -> keras.Model:
    """Image -> feature vector: the encoder plus a weightless readout.

    Readouts:
        flatten: the last block's map, flattened (keeps spatial layout).
        avg: global average pooling of the last block.
        multi: global average pooling of every block, concatenated, so that
            low-level features learned by pretraining reach the head too.
        stats: an orderless (texture) readout: the per-channel mean and mean square
            of every block's map over all positions, concatenated.
        projector: global average pooling of the last block, through the projection head
            that pretrained it (`projector`: a two-view objective's, saved beside the encoder),
            as SimCLRv2 fine-tunes; the head trains when the encoder does (frozen: it does not).
    ("auto" is resolved by the fine-tune pipeline.) A frozen encoder is called with training=False: BatchNorm stays in
    inference mode and its moving statistics never change.
    """
    if readout not in READOUTS:
        raise TransferError(f"readout must be one of {READOUTS}. Received: readout={readout!r}")
    inputs = keras.Input(encoder.input.shape[1:], name="image")
    call_kwargs = {"training": False} if frozen else {}
    if readout == "auto":
        raise TransferError("readout 'auto' is chosen by cross-validation in fine-tune; build a concrete readout")
    if readout == "projector":
        if projector is None:
            raise TransferError("readout 'projector' needs the projection head a two-view objective (contrastive, "
                                "vicreg, byol) saves beside the encoder; this encoder has none: choose avg, multi, "
                                "stats or flatten")
        projector.trainable = not frozen
        pooled = layers.GlobalAveragePooling2D(name="pooled")(encoder(inputs, **call_kwargs))
        return keras.Model(inputs, layers.Identity(name="readout")(projector(pooled, **call_kwargs)), name="features")
    if readout in ("multi", "stats"):
        taps = [encoder.get_layer(f"block{i}_out").output for i in range(1, block_count(encoder) + 1)]
        tapped = keras.Model(encoder.input, taps, name="encoder_taps")
        maps = tapped(inputs, **call_kwargs)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        pooled = [layers.GlobalAveragePooling2D(name=f"gap{i}")(m) for i, m in enumerate(maps, start=1)]
        if readout == "stats":
            pooled += [layers.GlobalAveragePooling2D(name=f"gap_sq{i}")(layers.Multiply(name=f"square{i}")([m, m]))
                       for i, m in enumerate(maps, start=1)]
        x = layers.Concatenate(name="readout")(pooled) if len(pooled) > 1 else layers.Identity(name="readout")(pooled[0])
    else:
        x = encoder(inputs, **call_kwargs)
        if readout == "flatten":
            x = layers.Flatten(name="readout")(x)
        else:
            x = layers.GlobalAveragePooling2D(name="readout")(x)
    return keras.Model(inputs, x, name="features")


def build_head(
    feature_dim: int,
    num_classes: int,
    units: tuple[int, ...],
    dropout: float,
    mean=None,
    variance=None,
) -> keras.Model:
    """Dense head: optional standardization, hidden layers (none: a linear softmax), softmax.

    With `mean`/`variance` (of the training features) the head first
    standardizes its input, which puts frozen features of any scale,
    pretrained or random, on an equal footing; a head trained end to end with
    its encoder passes None.
    """
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    if mean is not None:
        x = layers.Normalization(mean=mean, variance=variance + VARIANCE_FLOOR, name="head_norm")(x)
    for i, u in enumerate(units, start=1):
        if dropout:
            x = layers.Dropout(dropout, name=f"head_dropout{i}")(x)
        x = layers.Dense(u, activation="relu", name=f"head_dense{i}")(x)
    if dropout and units:
        x = layers.Dropout(dropout, name="head_dropout_out")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head_out", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="head")


def build_classifier(features: keras.Model, head: keras.Model) -> keras.Model:
    inputs = keras.Input(features.input.shape[1:], name="image")
    return keras.Model(inputs, head(features(inputs)), name="classifier")


def unfreeze_top(encoder: keras.Model, k: int) -> list[str]:
    """Make the conv (and projection) layers of the top k blocks trainable; BatchNorm stays frozen.

    BatchNorm layers keep trainable=False so that their moving statistics,
    learned on many images, are not re-estimated from a few labeled ones.
    Recompile afterwards. Returns the names of the layers made trainable.
    """
    n = block_count(encoder)
    if not 0 <= k <= n:
        raise TransferError(f"unfreeze_top must be between 0 and the encoder's {n} blocks. Received: unfreeze_top={k}")
    encoder.trainable = True
    names = []
    top = {f"block{i}_" for i in range(n - k + 1, n + 1)}
    for layer in encoder.layers:
        wanted = any(layer.name.startswith(p) for p in top) and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = wanted
        if wanted and layer.weights:
            names.append(layer.name)
    for layer in all_layers(encoder):  # inside a nested model (an ImageNet backbone) too
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return names


def freeze(model: keras.Model) -> None:
    """Make every layer untrainable (BatchNorm included). Recompile afterwards."""
    model.trainable = False
    for layer in model.layers:
        layer.trainable = False


def unfreeze(model: keras.Model) -> None:
    """Make every layer trainable again (BatchNorm included). Recompile afterwards."""
    model.trainable = True
    for layer in model.layers:
        layer.trainable = True


def all_layers(model: keras.Model) -> list:
    """Every layer inside `model`, nested models' included (each once), through `.layers`."""
    found, stack, seen = [], list(reversed(model.layers)), set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found.append(layer)
        stack.extend(reversed(getattr(layer, "layers", [])))
    return found


def forward_flops(model: keras.Model) -> int:
    """Floating-point operations (a multiply-add counts 2) of one image's forward pass through
    the model's convolutions and dense layers, nested models included. Normalization,
    activations and pooling are left out: they are a few percent of a conv net's work."""
    total = 0
    for layer in all_layers(model):
        if isinstance(layer, (layers.Conv2DTranspose,)):
            h, w = layer.input.shape[1:3]
            kh, kw = layer.kernel_size
            total += 2 * kh * kw * layer.input.shape[-1] * layer.filters * h * w
        elif isinstance(layer, layers.Conv2D):
            h, w = layer.output.shape[1:3]
            kh, kw = layer.kernel_size
            total += 2 * kh * kw * (layer.input.shape[-1] // layer.groups) * layer.filters * h * w
        elif isinstance(layer, layers.Dense):
            positions = 1
            for d in layer.input.shape[1:-1]:
                positions *= d
            total += 2 * layer.input.shape[-1] * layer.units * positions
    return int(total)
