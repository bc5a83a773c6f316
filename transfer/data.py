"""Decoding, the preprocessing contract, and splits: what every source shares.

Images enter through `transfer.stream.open_source` (listed by
`transfer.listing`, `transfer.prepared` or `transfer.builtins`); this module
turns one file into pixels and decides which images are tested on.

The preprocessing contract, recorded in every artifact manifest so that
fine-tuning and prediction apply exactly the same steps:

- decode with Pillow (PNG, JPEG, BMP, GIF, TIFF, WebP) or NumPy (`.npy`, for
  multispectral arrays of shape (H, W) or (H, W, C));
- scale to [0, 1] by the maximum of the source's integer type (255 for 8-bit,
  65535 for 16-bit); float arrays are clipped to [0, 1];
- drop alpha; convert gray -> RGB by repetition and RGB -> gray by ITU-R 601
  luma when the target has the other channel count;
- resize to `image_size` x `image_size` with bilinear filtering (the aspect
  ratio is not kept, as in Keras's `image_dataset_from_directory`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from transfer import lists
from transfer.errors import TransferError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


DEFAULT_TEST_FRACTION = 0.2  # of each class, by content id (`split_test`); built-ins hold it out of pretraining too

def preprocessing_contract(image_size: int, channels: int, in_model: str | None = None) -> dict:
    """The preprocessing as recorded in manifests; `in_model`: what the model then does to
    its input itself (inside the saved model, so predict and exports do it too)."""
    return {
        "image_size": int(image_size),
        "channels": int(channels),
        "resize": "bilinear, aspect ratio not kept",
        "scale": "[0, 1] by the source integer type's maximum; floats clipped",
        "channel_rule": "alpha dropped; gray->RGB by repetition; RGB->gray by ITU-R 601 luma",
        **({"in_model": in_model} if in_model else {}),
    }


def fingerprint(ids: np.ndarray) -> str:
    """SHA-256 over the sorted content ids: the same images give the same value."""
    return hashlib.sha256("\n".join(sorted(np.asarray(ids).tolist())).encode()).hexdigest()


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------- decoding


def _native_array(path: Path) -> np.ndarray:
    """Decode one file to a float32 (H, W, C) array in [0, 1], C in {1, 3} or any for .npy."""
    if path.suffix.lower() == ".npy":
        return _npy_array(path)
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns on odd metadata; failure is what matters
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mode = img.mode
            if mode in ("1", "L", "LA"):
                return _uint8(img.convert("L"))
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La", "PA"):
                return _uint8(img.convert("RGB"))
            if mode.startswith("I") or mode == "F":
                arr = np.asarray(img, dtype=np.float32)
                if mode != "F":
                    arr = arr / (65535.0 if arr.max(initial=0) <= 65535 else float(arr.max()))
                return np.clip(arr, 0.0, 1.0)[..., None]
            return _uint8(img.convert("RGB"))


def _uint8(img) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr  # scaled after resizing, which is cheaper on uint8


def _npy_array(path: Path) -> np.ndarray:
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"expected an array of shape (H, W) or (H, W, C), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr.astype(np.float32) / np.iinfo(arr.dtype).max, 0.0, 1.0)
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError("array contains NaN or infinite values")
        return np.clip(arr, 0.0, 1.0)
    raise ValueError(f"unsupported array dtype {arr.dtype}")


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, C) to (size, size, C) float32 in [0, 1]."""
    from PIL import Image

    if arr.shape[0] == size and arr.shape[1] == size:
        out = arr.astype(np.float32)
    elif arr.dtype == np.uint8 and arr.shape[2] in (1, 3):
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        out = np.asarray(img.resize((size, size), Image.BILINEAR, reducing_gap=3.0), np.float32)
        out = out.reshape(size, size, arr.shape[2])
    else:
        chans = [
            np.asarray(
                Image.fromarray(arr[..., c].astype(np.float32), mode="F").resize(
                    (size, size), Image.BILINEAR, reducing_gap=3.0
                )
            )
            for c in range(arr.shape[2])
        ]
        out = np.stack(chans, axis=-1)
    if arr.dtype == np.uint8:
        out = out / 255.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def convert_channels(arr: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """Convert (..., C) to (..., channels): gray <-> RGB only; anything else is refused."""
    have = arr.shape[-1]
    if have == channels:
        return arr
    if have == 1 and channels == 3:
        return np.repeat(arr, 3, axis=-1)
    if have == 3 and channels == 1:
        return (arr @ LUMA)[..., None].astype(np.float32)
    raise TransferError(
        f"{name} has {have} channels and cannot be converted to {channels}; "
        "only gray <-> RGB conversion is defined"
    )


def decode_image(path: str | os.PathLike, image_size: int, channels: int | None = None) -> np.ndarray:
    """Decode and preprocess one image file.

    Returns a float32 (image_size, image_size, C) array; C is `channels`, or the
    file's own channel count when `channels` is None.

    Raises:
        TransferError: if the file cannot be decoded as an image.
    """
    path = Path(path)
    try:
        if not lists.is_regular(path):  # a named pipe would block the read
            raise TransferError(f"{path}: not a regular file (a named pipe, socket or device)")
        arr = _native_array(path)
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError("image has no pixels")
        out = resize(arr, image_size)
    except TransferError:
        raise
    except MemoryError:
        raise TransferError(f"{path}: image too large to decode") from None
    except Exception as exc:  # Pillow and NumPy raise many types for bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TransferError(f"{path}: not a readable image ({reason})") from None
    return out if channels is None else convert_channels(out, channels, str(path))


# --------------------------------------------------------------------------- splits


def split_test(labels: np.ndarray, ids: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split into (train_index, test_index).

    Within each class, images are ordered by their content id and the first
    `round(test_fraction * n)` (at least one, when the class has two or more)
    go to the test split. It depends on nothing else: not on the seed, nor on
    the label budget, nor on the order of files.
    """
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[np.lexsort((members, ids[members]))]
        n_test = int(round(test_fraction * len(members)))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        else:
            n_test = 0
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def sample_per_class(
    labels: np.ndarray, index: np.ndarray, per_class: int | None, seed: int, class_names: list[str]
) -> np.ndarray:
    """A stratified draw of `per_class` items of each class from `index` (None: all of them). A
    class with no image at all in `index` is one only the test set holds (see
    `splits.class_union`): it has no labels to draw, and its test images count as errors."""
    if per_class is None:
        return np.sort(index)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(class_names):
        members = index[labels[index] == c]
        if 0 < len(members) < per_class:
            raise TransferError(
                f"class '{name}' has {len(members)} training image(s), fewer than "
                f"labels_per_class={per_class}"
            )
        chosen.extend(rng.permutation(members)[:per_class])
    return np.sort(np.array(chosen, dtype=np.int64))


def check_classes(data, src: str) -> None:
    """Refuse labeled data that cannot train a classifier."""
    present = np.unique(data.labels)
    if len(present) < 2:
        raise TransferError(f"{src}: a classifier needs at least 2 classes. Received: {len(present)} class(es)")
    missing = [data.class_names[i] for i in range(len(data.class_names)) if i not in set(present.tolist())]
    if missing:
        raise TransferError(f"{src}: class(es) {missing[:5]} have no readable images")
