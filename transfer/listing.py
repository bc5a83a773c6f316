"""A source's images, listed but not (necessarily) decoded: the `Listing` every source becomes,
and where its pixels are stored (`Store`: in memory, files, prepared shards, decoded once).

A directory or CSV manifest is listed here: every file's bytes hashed for its
content id, its header read for its channel count, no pixels decoded. Prepared
directories (`transfer.prepared`) and built-in data (`transfer.builtins`, held
in memory) produce the same type; `transfer.stream` turns any of them into batches.

Layouts: unlabeled, every image file below a directory; labeled, one
subfolder per class; either, a CSV manifest with a `path` column (relative to
the CSV) and, when labeled, a `label` column. Files whose header cannot be read
are skipped and reported (`Listing.skipped`), never silently; a source with
nothing readable is refused.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import tensorflow as tf

from transfer import data, labelstudio, lists, stopping
from transfer.errors import TransferError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class Store(Protocol):
    """Where a listing's pixels are: each kind reads the images at some positions, and nothing
    outside `transfer.listing`, `prepared` and `decoded` asks which kind it is.

    Attributes:
        decodes_per_pass: every pass over the images decodes files again (worth decoding once).
        folder: a temporary folder holding the pixels, removed when the run that made it ends (or None).
        held: how the images are held, for a log line ("in memory", "streamed", ...).
    """

    decodes_per_pass: bool
    folder: object | None
    held: str

    def check_size(self, src: str, image_size: int) -> None:
        """Refuse an image size the stored pixels cannot serve."""

    def records(self, listing: "Listing", index: np.ndarray, image_size: int, shuffle: bool, seed: int, shard):
        """Unbatched (position, float32 image, int64 label or -1) of the images at sorted `index`,
        this worker's part (`shard` = (num_shards, index)), shuffled afresh every pass with `shuffle`."""

    def batch_reader(self, listing: "Listing") -> Callable | None:
        """(positions, labels) -> (positions, float32 images, labels) of a whole batch at once,
        or None when images are read one at a time (`records`)."""


def order(ds, buffer: int, shuffle: bool, seed: int, shard):
    """This worker's part (`shard` = (num_shards, index)), shuffled afresh every epoch."""
    if shard:
        ds = ds.shard(*shard)
    return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True) if shuffle else ds


def batched_records(listing: "Listing", index, shuffle: bool, seed: int, shard, read) -> tf.data.Dataset:
    """`records` of a store that reads a whole batch of positions at once (`read`)."""
    ds = tf.data.Dataset.from_tensor_slices((index, listing.label_array()[index]))
    return order(ds, len(index), shuffle, seed, shard).batch(256).map(read).unbatch()


@dataclass(frozen=True)
class InMemory:
    """float32 (N, H, W, C) pixels held in memory (built-in data, decoded subsets, arrays)."""

    images: np.ndarray
    decodes_per_pass = False
    folder = None
    held = "in memory"

    def check_size(self, src: str, image_size: int) -> None:
        pass  # resized when it was loaded

    def records(self, listing, index, image_size, shuffle, seed, shard):
        ds = tf.data.Dataset.from_tensor_slices((index, self.images[index], listing.label_array()[index]))
        return order(ds, len(index), shuffle, seed, shard)

    def batch_reader(self, listing):
        images = tf.constant(self.images)
        return lambda positions, labels: (positions, tf.gather(images, positions), labels)


@dataclass(frozen=True)
class Files:
    """Image files (the listing's paths), decoded by `transfer.data.decode_image` as they are
    streamed, in parallel; a file that fails to decode is dropped and recorded in `Listing.failed`."""

    decodes_per_pass = True
    folder = None
    held = "streamed"

    def check_size(self, src: str, image_size: int) -> None:
        pass  # decoded to any size

    def records(self, listing, index, image_size, shuffle, seed, shard):
        paths = np.array(listing.paths, dtype=object)[index].astype(str)
        # Shuffling names, not pixels: a full shuffle costs a few bytes per image.
        ds = order(tf.data.Dataset.from_tensor_slices((index, paths, listing.label_array()[index])), len(index),
                   shuffle, seed, shard)
        channels = listing.channels
        empty = np.zeros((image_size, image_size, channels), np.float32)

        def decode(path):
            name = path.decode()
            try:
                return data.decode_image(name, image_size, channels), True
            except TransferError as exc:
                listing.record_failure(name, str(exc))
                return empty, False

        def load(i, path, label):
            image, ok = tf.numpy_function(decode, [path], (tf.float32, tf.bool), stateful=False)
            image.set_shape((image_size, image_size, channels))
            return i, image, label, ok

        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).filter(_is_ok).map(_drop_ok)

    def batch_reader(self, listing):
        return None


def _is_ok(position, image, label, ok):
    return ok


def _drop_ok(position, image, label, ok):
    return position, image, label


@dataclass
class Listing:
    """A source's images.

    Attributes:
        src: the source as given.
        paths: image files, or `NAME[i]` names of images held in memory (empty for a prepared source).
        ids: content ids of the source bytes (decide splits, detect leakage).
        labels: int64 class indices, or None.
        class_names: class names in index order.
        channels: the channel count every image is converted to.
        skipped: (path, reason) of files that could not be read at listing.
        store: where its pixels are (`Store`): files by default.
        test_mask: a fixed test split the source defines, or None.
        failed: (path, reason) of files that failed to decode while streaming.
        unlabeled_tasks: tasks of a Label Studio export left out for having no label (skipped,
            or not yet labeled).
    """

    src: str
    paths: list[str]
    ids: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    channels: int = 1
    skipped: list[tuple[str, str]] = field(default_factory=list)
    store: Store = field(default_factory=Files)
    test_mask: np.ndarray | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    unlabeled_tasks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def images(self) -> np.ndarray | None:
        """float32 (N, H, W, C) pixels when they are held in memory, else None."""
        return self.store.images if isinstance(self.store, InMemory) else None

    @classmethod
    def of_array(cls, images: np.ndarray, src: str = "memory", labels: np.ndarray | None = None) -> "Listing":
        """Images (or any arrays) already in memory (validation images, tests, labeled arrays)."""
        return cls(src=src, paths=[], ids=np.arange(len(images)).astype(str), channels=int(images.shape[-1]),
                   labels=None if labels is None else np.asarray(labels), store=InMemory(images))

    def subset(self, positions: np.ndarray, **fields) -> "Listing":
        """The images at `positions` (names, ids, labels, classes and channels), with `fields` set."""
        return Listing(src=self.src, paths=[self.name(i) for i in positions], ids=self.ids[positions],
                       labels=None if self.labels is None else self.labels[positions],
                       class_names=list(self.class_names), channels=self.channels, **fields)

    def fingerprint(self) -> str:
        return data.fingerprint(self.ids)

    def name(self, position: int) -> str:
        return self.paths[position] if self.paths else f"{self.src}[{position}]"

    def label_array(self) -> np.ndarray:
        """int64 labels (float targets of arrays as they are), or -1 for every image of an unlabeled source."""
        if self.labels is None:
            return np.full(len(self), -1, np.int64)
        return self.labels if self.labels.dtype.kind == "f" else self.labels.astype(np.int64)

    def check_size(self, image_size: int) -> None:
        """A prepared (or decoded) source has one image size and refuses another."""
        self.store.check_size(self.src, image_size)

    def with_classes(self, class_names: list[str] | None) -> "Listing":
        """The labels re-encoded in the order of `class_names` (e.g. a trained classifier's);
        labels outside it are refused."""
        if class_names is None or list(class_names) == self.class_names:
            return self
        self.labels = encode_labels([self.class_names[i] for i in self.labels], list(class_names), self.src)
        self.class_names = list(class_names)
        return self

    def unreadable(self) -> int:
        """How many distinct files could not be read, at listing or while decoding (a file
        streamed in several passes fails in each: `failed` holds every failure)."""
        return len(self.skipped) + len({name for name, _ in self.failed})

    def record_failure(self, name: str, reason: str) -> None:
        with self._lock:  # tf.data decodes in parallel threads
            self.failed.append((name, reason))


def report_skipped(skipped: list[tuple[str, str]], log, when: str = "") -> None:
    """One line for the files skipped as unreadable (`skipped` holds (path, reason) pairs; a file
    that failed in several passes counts once)."""
    if skipped:
        files = len({name for name, _ in skipped})
        log(f"skipped {files} unreadable file(s){' ' + when if when else ''}; first: {skipped[0][1]}")


def encode_labels(labels: list[str], class_names: list[str], src: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise TransferError(f"{src}: labels {unknown[:5]} are not among the classes {class_names[:10]}")
    return np.array([index[x] for x in labels], dtype=np.int64)


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


def list_files(src: str, labeled: bool, channels: int | None = None) -> Listing:
    """List a directory or CSV manifest: content ids and header channels, no pixels."""
    unlabeled_tasks = 0
    if labelstudio.is_export(src) and Path(src).exists():  # Label Studio's JSON, JSON-MIN or CSV export
        paths, labels, unlabeled_tasks = labelstudio.read(src)
        if not paths:
            raise TransferError(f"{src}: no task of the Label Studio export has a label yet ({unlabeled_tasks} "
                                "without one)")
        classes = sorted(set(labels)) if labeled else []
        labels = labels if labeled else None
    else:
        paths, labels, classes = _paths(src, labeled)
    kept, index, ids, chans, skipped = _read_headers(paths)
    target = int(channels) if channels is not None else auto_channels(chans)
    convertible = {target} | ({1, 3} if target in (1, 3) else set())
    if not set(chans) <= convertible:  # said now, not as every image failing to decode later
        raise TransferError(f"{src}: images have {sorted(set(chans))} channels and cannot all be converted to the "
                            f"{target} asked for (the encoder's, or --channels; only gray <-> RGB is converted)")
    encoded = encode_labels([labels[i] for i in index], classes, src) if labeled else None
    return Listing(src=src, paths=kept, ids=ids, labels=encoded, class_names=classes if labeled else [],
                   channels=target, skipped=skipped, unlabeled_tasks=unlabeled_tasks)


# --------------------------------------------------------------------------- files and headers


def _paths(src: str, labeled: bool) -> tuple[list[Path], list[str] | None, list[str]]:
    """(image paths, their label names or None, sorted class names)."""
    path = Path(src)
    if not path.exists():
        raise TransferError(f"data source not found: {src} (expected a directory, a CSV manifest or a built-in name)")
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
    """A CSV manifest's paths (by the rule of `transfer.lists`: relative to the CSV's folder) and labels."""
    table = lists.read(csv_path, "CSV manifest", ("path", "label") if labeled else ("path",))
    if not table.rows:
        raise TransferError(f"{csv_path}: the CSV manifest lists no images")
    paths, labels, missing = [], [], []
    for i, row in enumerate(table.rows, start=2):
        rel = row.get("path", "")
        if not rel:
            raise TransferError(f"{csv_path}: line {i} has an empty path")
        p = table.resolve(rel)
        if not (p.exists() or p.is_symlink()):
            missing.append(rel)
        paths.append(p)
        if labeled:
            label = row.get("label", "")
            if not label:
                raise TransferError(f"{csv_path}: line {i} ({rel}) has an empty label")
            labels.append(label)
    if missing:
        raise TransferError(f"{csv_path}: {len(missing)} listed file(s) do not exist (first: {missing[0]}; a relative "
                            f"path is read relative to the CSV's folder, {csv_path.parent})")
    return paths, (labels if labeled else None)


def _header_channels(path: Path, raw: bytes) -> int:
    """Channel count from the file's header, without decoding its pixels."""
    if path.suffix.lower() == ".npy":
        f = io.BytesIO(raw)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"expected an array of shape (H, W) or (H, W, C), got {shape}")
        return 1 if len(shape) == 2 else int(shape[2])
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        if img.width < 1 or img.height < 1:
            raise ValueError("image has no pixels")
        if img.mode == "P":
            return 3
        return 1 if img.mode in _GRAY_MODES else 3


def _read_headers(paths: list[Path]):
    """(kept paths, kept indices, ids, channel counts, skipped) from hashing and header reads."""
    kept, index, ids, chans, skipped = [], [], [], [], []
    for i, p in enumerate(paths):
        stopping.check()  # a safe point for a stop signal, between files
        try:
            if not lists.is_regular(p):  # a named pipe or a device would block the read, or never end
                skipped.append((str(p), f"{p}: not a regular file (a named pipe, socket or device)"))
                continue
            raw = p.read_bytes()
        except OSError as exc:
            skipped.append((str(p), f"{p}: cannot read ({exc.strerror or exc})"))
            continue
        try:
            if not raw:
                raise ValueError("empty file")
            chans.append(_header_channels(p, raw))
        except Exception as exc:  # Pillow and NumPy raise many types for bad headers
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            skipped.append((str(p), f"{p}: not a readable image ({reason})"))
            continue
        kept.append(str(p))
        index.append(i)
        ids.append(data.content_id(raw))
    if not kept:
        detail = f" (first: {skipped[0][1]})" if skipped else ""
        raise TransferError(f"no readable images among {len(paths)} file(s){detail}")
    return kept, index, np.array(ids), chans, skipped
