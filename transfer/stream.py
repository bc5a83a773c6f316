"""Streaming image sources: list once, decode on the fly through `tf.data` (bounded memory).

A directory or CSV manifest is *listed* (every file's bytes hashed for its
content id, its header read for its channel count: no pixels decoded), and
its images are then decoded, resized and batched by a `tf.data` pipeline with
parallel decoding and prefetching, epoch after epoch, never all at once. The
decoding is `transfer.data.decode_image`, the same preprocessing contract as
the in-memory loader, so a streamed and an in-memory run see the same pixels.

`transfer prepare SRC --out DIR` decodes and resizes a source once into
sharded TFRecord files (see `transfer.prepared`); such a prepared directory is
itself a source, read without any image decoding.

Files whose header cannot be read are skipped at listing; files that fail to
decode later (truncated data behind a valid header) are dropped from the
stream and counted in `Listing.failed`.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer import data
from transfer.errors import TransferError

# A stream whose length is unknown (files that fail to decode are dropped) ends its first epoch by
# running out of data: that is how Keras learns an epoch's length, not a problem worth a warning.
warnings.filterwarnings("ignore", message="Your input ran out of data")


@dataclass
class Listing:
    """A source's images, listed but not decoded.

    Attributes:
        src: the source as given.
        paths: image files (empty for a prepared source).
        ids: content ids of the source bytes (decide splits, detect leakage).
        labels: int64 class indices, or None.
        class_names: class names in index order.
        channels: the channel count every image is converted to.
        skipped: (path, reason) of files whose header could not be read.
        prepared: the prepared directory's description, when the source is one.
    """

    src: str
    paths: list[str]
    ids: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    channels: int = 1
    skipped: list[tuple[str, str]] = field(default_factory=list)
    prepared: dict | None = None
    images: np.ndarray | None = None  # held in memory (built-in data)
    test_mask: np.ndarray | None = None  # a fixed test split the source defines
    failed: list[tuple[str, str]] = field(default_factory=list)  # decode failures seen while streaming
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        return data.fingerprint(self.ids)

    def label_array(self) -> np.ndarray:
        """int64 labels, or -1 for every image of an unlabeled source."""
        return self.labels.astype(np.int64) if self.labels is not None else np.full(len(self), -1, np.int64)

    def image_size(self, requested: int) -> int:
        """The size images will have: a prepared source has one, and refuses another."""
        if self.prepared and int(self.prepared["image_size"]) != int(requested):
            raise TransferError(
                f"{self.src} was prepared at {self.prepared['image_size']}x{self.prepared['image_size']}; "
                f"use --image-size {self.prepared['image_size']} or prepare it again. "
                f"Received: image_size={requested}")
        return int(requested)


def from_imageset(src: str, images: data.ImageSet) -> Listing:
    """A Listing over images already in memory (built-in data)."""
    return Listing(src=src, paths=list(images.names), ids=images.ids, labels=images.labels,
                   class_names=list(images.class_names),
                   channels=int(images.images.shape[-1]), skipped=list(images.skipped),
                   images=images.images, test_mask=images.test_mask)


def open_source(src: str, labeled: bool, image_size: int, channels: int | None = None,
                class_names: list[str] | None = None) -> Listing:
    """Built-in data (decoded into memory; for pretraining, without its test split) or a listed
    directory, CSV manifest or prepared directory (streamed)."""
    from transfer import builtins

    if builtins.is_builtin(src):
        images = (data.load_labeled(src, image_size, channels, class_names) if labeled
                  else data.load_unlabeled(src, image_size, channels))
        return from_imageset(src, images)
    listing = list_source(src, labeled, channels, class_names)
    listing.image_size(image_size)
    return listing


def open_for_prediction(src: str, image_size: int, channels: int) -> Listing:
    """Every image of SRC (a built-in's test split included), to classify."""
    from transfer import builtins

    if builtins.is_builtin(src):
        return from_imageset(src, data.load_images_for_prediction(src, image_size, channels))
    listing = list_source(src, labeled=False, channels=channels)
    listing.image_size(image_size)
    return listing


def name_of(listing: Listing, position: int) -> str:
    return listing.paths[position] if listing.paths else f"{listing.src}[{position}]"


def is_prepared(src: str) -> bool:
    from transfer import prepared

    return (Path(src) / prepared.PREPARED).is_file()


# --------------------------------------------------------------------------- listing


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
        return 1 if img.mode in data._GRAY_MODES else 3


def _list_files(paths: list[Path]):
    """(kept paths, kept indices, ids, channel counts, skipped) from hashing and header reads."""
    kept, index, ids, chans, skipped = [], [], [], [], []
    for i, p in enumerate(paths):
        try:
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


def list_source(src: str, labeled: bool, channels: int | None = None,
                class_names: list[str] | None = None) -> Listing:
    """List a directory, CSV manifest or prepared directory (see `transfer.data` for the layouts)."""
    if is_prepared(src):
        from transfer import prepared

        return prepared.list_prepared(src, labeled, channels, class_names)
    paths, labels, classes = data.list_files(src, labeled)
    kept, index, ids, chans, skipped = _list_files(paths)
    target = int(channels) if channels is not None else data.auto_channels(chans)
    if target not in (1, 3) and set(chans) != {target}:
        raise TransferError(f"{src}: images have {sorted(set(chans))} channels and cannot all be converted to {target}")
    encoded = None
    if labeled:
        order = class_names if class_names is not None else classes
        encoded = data._encode([labels[i] for i in index], list(order), src)
        classes = list(order)
    return Listing(src=src, paths=kept, ids=ids, labels=encoded, class_names=list(classes),
                   channels=target, skipped=skipped)


# --------------------------------------------------------------------------- streaming


def dataset(listing: Listing, index: np.ndarray, image_size: int, *, batch_size: int, shuffle: bool = False,
            seed: int = 0, with_labels: bool = False, shard: tuple[int, int] | None = None):
    """A `tf.data.Dataset` of batches of float32 images (and int64 labels with `with_labels`).

    Args:
        index: which of the listing's images to stream.
        shard: (num_shards, shard_index) to stream a disjoint part (one per worker).
    """
    import tensorflow as tf

    if listing.images is not None:
        ds = _in_memory_batches(listing, index, batch_size, shuffle, seed, shard, with_labels)
    else:
        ds = records(listing, index, image_size, shuffle=shuffle, seed=seed, shard=shard)
        ds = ds.map(_image_label if with_labels else _image_only)
        ds = ds.batch(batch_size)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded above
    return ds.with_options(options)


def _in_memory_batches(listing, index, batch_size, shuffle, seed, shard, with_labels):
    """Images already in memory: shuffle and batch positions, then gather whole batches
    (one gather per batch, not one dataset element per image)."""
    import tensorflow as tf

    index = np.sort(np.asarray(index, dtype=np.int64))
    images = tf.constant(listing.images)
    labels = tf.constant(listing.label_array())
    ds = tf.data.Dataset.from_tensor_slices(index)
    if shard:
        ds = ds.shard(*shard)
    if shuffle:
        ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)

    def gather(positions):
        batch = tf.gather(images, positions)
        return (batch, tf.gather(labels, positions)) if with_labels else batch

    return ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def _image_label(position, image, label):
    return image, label


def _image_only(position, image, label):
    return image


def _is_ok(position, image, label, ok):
    return ok


def _drop_ok(position, image, label, ok):
    return position, image, label


def records(listing: Listing, index, image_size: int, *, shuffle: bool = False, seed: int = 0, shard=None):
    """Unbatched (position in the listing, float32 image, int64 label or -1) for the images at `index`."""
    import tensorflow as tf

    index = np.sort(np.asarray(index, dtype=np.int64))
    if listing.images is not None:
        ds = tf.data.Dataset.from_tensor_slices((index, listing.images[index], listing.label_array()[index]))
        if shard:
            ds = ds.shard(*shard)
        return ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True) if shuffle else ds
    if listing.prepared:
        from transfer import prepared

        return prepared.records(listing, index, image_size, shuffle, seed, shard)
    return _file_records(listing, index, image_size, shuffle, seed, shard)


def _file_records(listing, index, image_size, shuffle, seed, shard):
    import tensorflow as tf

    paths = np.array(listing.paths, dtype=object)[index].astype(str)
    ds = tf.data.Dataset.from_tensor_slices((index, paths, listing.label_array()[index]))
    if shard:
        ds = ds.shard(*shard)
    if shuffle:  # shuffling names, not pixels: a full shuffle costs a few bytes per image
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    channels = listing.channels
    empty = np.zeros((image_size, image_size, channels), np.float32)

    def decode(path):
        name = path.decode()
        try:
            return data.decode_image(name, image_size, channels), True
        except TransferError as exc:
            with listing._lock:
                listing.failed.append((name, str(exc)))
            return empty, False

    def load(i, path, label):
        image, ok = tf.numpy_function(decode, [path], (tf.float32, tf.bool), stateful=False)
        image.set_shape((image_size, image_size, channels))
        return i, image, label, ok

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.filter(_is_ok).map(_drop_ok)


def train_images(listing: Listing, index: np.ndarray, image_size: int):
    """The images at `index` as `objectives.TrainImages`: batches streamed on demand."""
    from transfer.objectives import TrainImages

    def make(batch_size, shuffle, seed, shard):
        return dataset(listing, index, image_size, batch_size=batch_size, shuffle=shuffle, seed=seed, shard=shard)

    return TrainImages(len(index), (image_size, image_size, listing.channels), make)


def load(listing: Listing, index: np.ndarray, image_size: int) -> data.ImageSet:
    """Decode the listed images at `index` into memory (for small subsets: held-out, few labels)."""
    if listing.images is not None:
        index = np.sort(np.asarray(index, dtype=np.int64))
        return data.ImageSet(images=listing.images[index], ids=listing.ids[index],
                             names=[name_of(listing, i) for i in index],
                             labels=None if listing.labels is None else listing.labels[index],
                             class_names=list(listing.class_names))
    before = len(listing.failed)
    positions, images, labels = [], [], []
    for i, image, label in records(listing, index, image_size).batch(256).as_numpy_iterator():
        positions.append(i)
        images.append(image)
        labels.append(label)
    kept = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    shape = (0, image_size, image_size, listing.channels)
    return data.ImageSet(
        images=np.concatenate(images) if images else np.zeros(shape, np.float32),
        ids=listing.ids[kept],
        names=[name_of(listing, i) for i in kept],
        labels=np.concatenate(labels).astype(np.int64) if listing.labels is not None and labels else None,
        class_names=list(listing.class_names),
        skipped=list(listing.skipped) + listing.failed[before:],
    )
