"""Image sources -> float32 arrays in [0, 1] of shape (N, H, W, C).

A source (SRC) is a directory of images, a CSV manifest (`path[,label]`, paths
relative to the CSV file) or a built-in name (see `transfer.builtins`).

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

Unreadable image files are skipped and reported (`ImageSet.skipped`), never
silently: a corrupt file among thousands should not end a long job. A source
in which nothing is readable is refused.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.errors import TransferError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preprocessing_contract(image_size: int, channels: int) -> dict:
    """The preprocessing as recorded in manifests."""
    return {
        "image_size": int(image_size),
        "channels": int(channels),
        "resize": "bilinear, aspect ratio not kept",
        "scale": "[0, 1] by the source integer type's maximum; floats clipped",
        "channel_rule": "alpha dropped; gray->RGB by repetition; RGB->gray by ITU-R 601 luma",
    }


@dataclass
class ImageSet:
    """Decoded images and what is known about them.

    Attributes:
        images: float32 array (N, H, W, C) in [0, 1].
        ids: content hashes (16 hex chars) of the *source* bytes; they decide
            the test split and detect leakage, independent of preprocessing.
        names: file paths, or `NAME[i]` for built-in data.
        labels: int64 class indices, or None for unlabeled sources.
        class_names: class names in index order.
        skipped: (path, reason) for every file that could not be read.
        test_mask: True for the images of a test split the source defines
            (e.g. a built-in's); None when the split is left to `split_test`.
    """

    images: np.ndarray
    ids: np.ndarray
    names: list[str]
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    test_mask: np.ndarray | None = None  # a fixed test split defined by the source itself

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(
            images=self.images[index],
            ids=self.ids[index],
            names=[self.names[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            class_names=list(self.class_names),
            skipped=list(self.skipped),
            test_mask=None if self.test_mask is None else self.test_mask[index],
        )

    def fingerprint(self) -> str:
        return fingerprint(self.ids)


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


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
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
        return (arr @ _LUMA)[..., None].astype(np.float32)
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
        arr = _native_array(path)
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError("image has no pixels")
        out = _resize(arr, image_size)
    except TransferError:
        raise
    except MemoryError:
        raise TransferError(f"{path}: image too large to decode") from None
    except Exception as exc:  # Pillow and NumPy raise many types for bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TransferError(f"{path}: not a readable image ({reason})") from None
    return out if channels is None else convert_channels(out, channels, str(path))


# --------------------------------------------------------------------------- listing sources


def _walk_images(root: Path) -> list[Path]:
    """Image files below root, sorted; symlinked directories are not followed (no loops)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return found


def _read_manifest(csv_path: Path, labeled: bool) -> tuple[list[Path], list[str] | None]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TransferError(f"{csv_path}: not a readable CSV manifest ({exc})") from None
    if "path" not in columns:
        raise TransferError(f"{csv_path}: a CSV manifest needs a 'path' column. Received columns: {columns}")
    if labeled and "label" not in columns:
        raise TransferError(f"{csv_path}: a labeled CSV manifest needs a 'label' column. Received columns: {columns}")
    if not rows:
        raise TransferError(f"{csv_path}: the CSV manifest lists no images")
    base = csv_path.parent
    paths, labels, missing = [], [], []
    for i, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        if not rel:
            raise TransferError(f"{csv_path}: line {i} has an empty path")
        p = base / rel
        if not p.is_file():
            missing.append(rel)
        paths.append(p)
        if labeled:
            label = (row.get("label") or "").strip()
            if not label:
                raise TransferError(f"{csv_path}: line {i} ({rel}) has an empty label")
            labels.append(label)
    if missing:
        raise TransferError(
            f"{csv_path}: {len(missing)} listed file(s) do not exist (first: {missing[0]})"
        )
    return paths, (labels if labeled else None)


def _decode_many(paths: list[Path], image_size: int, channels: int | None):
    """Decode files; returns (arrays, kept indices, ids, skipped)."""
    arrays, kept, ids, skipped = [], [], [], []
    for i, p in enumerate(paths):
        try:
            raw = p.read_bytes()
            if not raw:
                raise TransferError(f"{p}: empty file")
            arr = decode_image(p, image_size, None)
        except TransferError as exc:
            skipped.append((str(p), str(exc)))
            continue
        except OSError as exc:
            skipped.append((str(p), f"{p}: cannot read ({exc.strerror or exc})"))
            continue
        arrays.append(arr)
        kept.append(i)
        ids.append(content_id(raw))
    if not arrays:
        detail = f" (first: {skipped[0][1]})" if skipped else ""
        raise TransferError(f"no readable images among {len(paths)} file(s){detail}")
    target = channels if channels is not None else auto_channels([a.shape[-1] for a in arrays])
    arrays = [convert_channels(a, target, str(paths[i])) for a, i in zip(arrays, kept)]
    return np.stack(arrays).astype(np.float32), kept, np.array(ids), skipped


def auto_channels(channel_counts: list[int]) -> int:
    """The channel count a source gets by default: 1 if all images are gray, 3 if all are
    gray or RGB, else the one count all images share (multispectral `.npy`)."""
    counts = set(channel_counts)
    if counts <= {1}:
        return 1
    if counts <= {1, 3}:
        return 3
    if len(counts) == 1:
        return counts.pop()
    raise TransferError(f"images have mixed channel counts {sorted(counts)}; convert them to one count first")


def _check_source(src: str) -> Path:
    path = Path(src)
    if not path.exists():
        raise TransferError(f"data source not found: {src} (expected a directory, a CSV manifest or a built-in name)")
    return path


def list_files(src: str, labeled: bool) -> tuple[list[Path], list[str] | None, list[str]]:
    """(image paths, their label names or None, sorted class names) of a directory or CSV manifest.

    Unlabeled: every image file below a directory. Labeled: one subfolder per class.
    """
    path = _check_source(src)
    if not path.is_dir():
        paths, labels = _read_manifest(path, labeled=labeled)
        return paths, labels, sorted(set(labels)) if labeled else []
    if not labeled:
        paths = _walk_images(path)
        if not paths:
            raise TransferError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found below {src}")
        return paths, None, []
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise TransferError(
            f"{src} has no class subfolders; labeled data needs one subfolder per class "
            "(or a CSV manifest with path,label)"
        )
    paths, labels = [], []
    for name in classes:
        files = _walk_images(path / name)
        paths += files
        labels += [name] * len(files)
    if not paths:
        raise TransferError(f"no image files found in the class subfolders of {src}")
    return paths, labels, classes


def load_unlabeled(src: str, image_size: int, channels: int | None = None) -> ImageSet:
    """Load every image of SRC, ignoring labels.

    Args:
        src: directory (all image files below it), CSV manifest, or built-in name.
        image_size: output height and width.
        channels: output channels; None picks 1 if all images are gray, else 3
            (or the common count of multispectral `.npy` arrays).
    """
    from transfer import builtins

    if builtins.is_builtin(src):
        return builtins.load(src, image_size, channels, labeled=False, split="pretrain")
    paths, _, _ = list_files(src, labeled=False)
    images, kept, ids, skipped = _decode_many(paths, image_size, channels)
    return ImageSet(images=images, ids=ids, names=[str(paths[i]) for i in kept], skipped=skipped)


def load_labeled(
    src: str, image_size: int, channels: int | None = None, class_names: list[str] | None = None
) -> ImageSet:
    """Load a labeled SRC: one subfolder per class, a `path,label` CSV, or a built-in.

    Args:
        class_names: fix the class order (e.g. a trained classifier's classes);
            labels outside it are refused. By default classes are sorted names.
    """
    from transfer import builtins

    if builtins.is_builtin(src):
        data = builtins.load(src, image_size, channels, labeled=True, split="all")
        return _relabel(data, class_names, src)
    paths, labels, classes = list_files(src, labeled=True)
    images, kept, ids, skipped = _decode_many(paths, image_size, channels)
    kept_labels = [labels[i] for i in kept]
    order = class_names if class_names is not None else classes
    data = ImageSet(
        images=images,
        ids=ids,
        names=[str(paths[i]) for i in kept],
        labels=_encode(kept_labels, order, src),
        class_names=list(order),
        skipped=skipped,
    )
    return data


def _encode(labels: list[str], class_names: list[str], src: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise TransferError(f"{src}: labels {unknown[:5]} are not among the classes {class_names[:10]}")
    return np.array([index[x] for x in labels], dtype=np.int64)


def _relabel(data: ImageSet, class_names: list[str] | None, src: str) -> ImageSet:
    if class_names is None or class_names == data.class_names:
        return data
    data.labels = _encode([data.class_names[i] for i in data.labels], class_names, src)
    data.class_names = list(class_names)
    return data


def load_images_for_prediction(src: str, image_size: int, channels: int) -> ImageSet:
    """Images to classify: a directory (all files below it), a CSV with a `path` column, or a built-in."""
    from transfer import builtins

    if builtins.is_builtin(src):
        return builtins.load(src, image_size, channels, labeled=False, split="all")
    return load_unlabeled(src, image_size, channels)


# --------------------------------------------------------------------------- splits


def split_test(labels: np.ndarray, ids: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split into (train_index, test_index).

    Within each class, images are ordered by their content id and the first
    `round(test_fraction * n)` (at least one, when the class has two or more)
    go to the test split. It depends on nothing else: not on the seed, nor on
    the label budget, nor on the order of files.
    """
    if not 0.0 < test_fraction < 1.0:
        raise TransferError(f"test_fraction must be between 0 and 1. Received: test_fraction={test_fraction}")
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
    """A stratified draw of `per_class` items of each class from `index` (None: all of them)."""
    if per_class is None:
        return np.sort(index)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(class_names):
        members = index[labels[index] == c]
        if len(members) < per_class:
            raise TransferError(
                f"class '{name}' has {len(members)} training image(s), fewer than "
                f"labels_per_class={per_class}"
            )
        chosen.extend(rng.permutation(members)[:per_class])
    return np.sort(np.array(chosen, dtype=np.int64))


def check_classes(data: ImageSet, src: str) -> None:
    """Refuse labeled data that cannot train a classifier."""
    present = np.unique(data.labels)
    if len(present) < 2:
        raise TransferError(f"{src}: a classifier needs at least 2 classes. Received: {len(present)} class(es)")
    missing = [data.class_names[i] for i in range(len(data.class_names)) if i not in set(present.tolist())]
    if missing:
        raise TransferError(f"{src}: class(es) {missing[:5]} have no readable images")
