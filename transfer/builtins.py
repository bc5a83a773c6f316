"""Built-in data that ships inside installed packages (no internet needed).

- `digits`: scikit-learn's 1,797 handwritten digits (8x8 gray, 10 classes).

A built-in used as a *pretraining* source gives only the images outside its
held-out test split (`DEFAULT_TEST_FRACTION`, the same rule `fine-tune` uses),
so that pretraining never sees the images a later fine-tune is tested on.
"""

from __future__ import annotations

import numpy as np

from transfer.data import ImageSet, _resize, content_id, convert_channels, split_test
from transfer.errors import TransferError

DEFAULT_TEST_FRACTION = 0.2


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = (d.images / 16.0).astype(np.float32)[..., None]
    ids = np.array([content_id(d.images[i].astype(np.uint8).tobytes()) for i in range(len(raw))])
    return raw, d.target.astype(np.int64), [str(c) for c in d.target_names], ids


_SOURCES = {"digits": _digits}


def names() -> list[str]:
    return sorted(_SOURCES)


def is_builtin(src: str) -> bool:
    return str(src) in _SOURCES


def load(name: str, image_size: int, channels: int | None, labeled: bool, split: str) -> ImageSet:
    """Load a built-in set.

    Args:
        split: "all", or "pretrain" (everything but the held-out test split).
    """
    if name not in _SOURCES:
        raise TransferError(f"unknown built-in data '{name}'. Available: {names()}")
    raw, labels, class_names, ids = _SOURCES[name]()
    index = np.arange(len(raw))
    if split == "pretrain":
        index, _ = split_test(labels, ids, DEFAULT_TEST_FRACTION)
    images = np.stack([_resize(raw[i], image_size) for i in index])
    if channels is not None:
        images = convert_channels(images, channels, name)
    return ImageSet(
        images=images.astype(np.float32),
        ids=ids[index],
        names=[f"{name}[{i}]" for i in index],
        labels=labels[index] if labeled else None,
        class_names=class_names if labeled else [],
    )
