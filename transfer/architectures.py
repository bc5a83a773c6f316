"""Encoder architectures as data: conv blocks and presets (no Keras import, so it loads fast).

An encoder is a list of conv blocks, described the way the CNN literature
does: filters, kernel size, stride, `same`/`valid` padding, max/avg/no
pooling, optional BatchNorm, activation, and optionally a residual (skip)
connection around the block's convolutions. Presets are thin lists of blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transfer.errors import TransferError
from transfer.vocabulary import READOUT_CANDIDATES, READOUTS  # noqa: F401 (the names; what they build is here)

@dataclass(frozen=True)
class Block:
    """One conv block: `convs` convolutions (+BN, activation), then optional pooling."""

    filters: int
    kernel_size: int = 3
    strides: int = 1
    padding: str = "same"
    pool: str = "max"
    pool_size: int = 2
    convs: int = 1
    batch_norm: bool = True
    activation: str = "relu"
    residual: bool = False

    def __post_init__(self):
        if self.filters < 1 or self.kernel_size < 1 or self.strides < 1 or self.convs < 1:
            raise TransferError(f"block sizes must be >= 1. Received: {self}")
        if self.padding not in ("same", "valid"):
            raise TransferError(f"padding must be 'same' or 'valid'. Received: padding={self.padding!r}")
        if self.pool not in ("max", "avg", "none"):
            raise TransferError(f"pool must be 'max', 'avg' or 'none'. Received: pool={self.pool!r}")


PRESETS: dict[str, list[Block]] = {
    # Three conv+BN+ReLU+max-pool blocks: a sound default for small images.
    "small": [Block(32), Block(64), Block(128)],
    # LeNet-5 (LeCun et al. 1998): 5x5 valid convs, tanh, average pooling; C5 is a 5x5 conv to 120 maps.
    "lenet5": [
        Block(6, 5, padding="valid", pool="avg", batch_norm=False, activation="tanh"),
        Block(16, 5, padding="valid", pool="avg", batch_norm=False, activation="tanh"),
        Block(120, 5, padding="valid", pool="none", batch_norm=False, activation="tanh"),
    ],
    # VGG-style: stacks of two 3x3 convs before each max pool, filters doubling.
    "vgg": [Block(32, convs=2), Block(64, convs=2), Block(128, convs=2)],
    # ResNet-style: a stem, then basic residual units (two 3x3 convs + skip), downsampling by stride 2.
    "resnet": [
        Block(32, pool="none"),
        Block(32, convs=2, pool="none", residual=True),
        Block(64, strides=2, convs=2, pool="none", residual=True),
        Block(128, strides=2, convs=2, pool="none", residual=True),
    ],
}


def preset_blocks(arch: str, filters: tuple[int, ...] | None = None, **overrides) -> list[Block]:
    """The blocks of preset `arch`, with user overrides.

    Args:
        filters: one entry per block; a longer list repeats the last block's
            template, a shorter one drops the top blocks.
        overrides: Block fields (kernel_size, strides, padding, pool,
            batch_norm, activation) applied to every block; None is ignored.
    """
    if arch not in PRESETS:
        raise TransferError(f"unknown arch '{arch}'. Available: {sorted(PRESETS)}")
    blocks = list(PRESETS[arch])
    if filters:
        blocks = [
            dataclasses.replace(blocks[min(i, len(blocks) - 1)], filters=int(f)) for i, f in enumerate(filters)
        ]
    changes = {k: v for k, v in overrides.items() if v is not None}
    return [dataclasses.replace(b, **changes) for b in blocks]


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def block_shapes(blocks: list[Block], image_size: int, arch: str = "custom") -> list[int]:
    """Spatial size after each block; refuses an image size too small for the blocks."""
    sizes, size = [], image_size
    for i, b in enumerate(blocks, start=1):
        for j in range(b.convs):
            stride = b.strides if j == 0 else 1
            if b.padding == "valid" and size < b.kernel_size:
                raise TransferError(
                    f"image size {image_size} is too small for arch {arch}: block {i} gets "
                    f"{size}x{size} maps but its {b.kernel_size}x{b.kernel_size} valid conv needs at least "
                    f"{b.kernel_size}. Use a larger --image-size or fewer blocks"
                )
            size = _out_size(size, b.kernel_size, stride, b.padding)
        if b.pool != "none":
            if size < b.pool_size:
                raise TransferError(
                    f"image size {image_size} is too small for arch {arch}: block {i} would pool "
                    f"{size}x{size} maps. Use a larger --image-size or fewer blocks"
                )
            size //= b.pool_size
        sizes.append(size)
    return sizes
