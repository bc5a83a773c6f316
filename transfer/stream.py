"""Streaming image sources: list once, decode on the fly through `tf.data` (bounded memory).

A directory or CSV manifest is *listed* (every file's bytes hashed for its
content id, its header read for its channel count: no pixels decoded), and
its images are then decoded, resized and batched by a `tf.data` pipeline with
parallel decoding and prefetching, epoch after epoch, never all at once. The
decoding is `transfer.data.decode_image`, the same preprocessing contract as
the in-memory loader, so a streamed and an in-memory run see the same pixels.

`transfer prepare SRC --out DIR` decodes and resizes a source once into
sharded TFRecord files (float16 pixels, content ids, labels); such a prepared
directory is itself a source, read without any image decoding.

Files whose header cannot be read are skipped at listing; files that fail to
decode later (truncated data behind a valid header) are dropped from the
stream and counted in `Listing.failed`.
"""

from __future__ import annotations

import io
import json
import math
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

PREPARED = "prepared.json"
PREPARED_FORMAT = "transfer-prepared"
PREPARED_VERSION = 1
SHARD_IMAGES = 4096  # images per TFRecord shard: many shards let workers read disjoint files
SHUFFLE_BYTES = 64 * 2**20  # the shuffle buffer of a prepared source holds at most this many pixel bytes


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
    return (Path(src) / PREPARED).is_file()


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
        return _list_prepared(src, labeled, channels, class_names)
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


def _list_prepared(src: str, labeled: bool, channels: int | None, class_names) -> Listing:
    info = json.loads((Path(src) / PREPARED).read_text())
    if info.get("format") != PREPARED_FORMAT or info.get("format_version") != PREPARED_VERSION:
        raise TransferError(f"{src}: not a prepared directory of this version ({PREPARED})")
    index = np.load(Path(src) / "index.npz", allow_pickle=False)
    labels = index["labels"] if "labels" in index.files else None
    if labeled and labels is None:
        raise TransferError(f"{src} was prepared without labels; run `transfer prepare --labeled` on a labeled source")
    if channels is not None and int(channels) != int(info["channels"]) and {int(channels), int(info["channels"])} != {1, 3}:
        raise TransferError(f"{src} holds {info['channels']}-channel images; they cannot be converted to {channels}")
    names = list(info.get("class_names", []))
    if labeled and class_names is not None and class_names != names:
        labels = data._encode([names[i] for i in labels], list(class_names), src)
        names = list(class_names)
    return Listing(src=src, paths=[], ids=index["ids"], labels=labels if labeled else None,
                   class_names=names if labeled else [], channels=int(channels or info["channels"]),
                   skipped=[], prepared=info)


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
    labels = tf.constant(listing.labels if listing.labels is not None else np.full(len(listing), -1, np.int64))
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


def _position_image(position, image, label):
    return position, image


def records(listing: Listing, index, image_size: int, *, shuffle: bool = False, seed: int = 0, shard=None):
    """Unbatched (position in the listing, float32 image, int64 label or -1) for the images at `index`."""
    import tensorflow as tf

    index = np.sort(np.asarray(index, dtype=np.int64))
    if listing.images is not None:
        labels = listing.labels[index] if listing.labels is not None else np.full(len(index), -1, np.int64)
        ds = tf.data.Dataset.from_tensor_slices((index, listing.images[index], labels))
        if shard:
            ds = ds.shard(*shard)
        return ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True) if shuffle else ds
    if listing.prepared:
        return _prepared_records(listing, index, image_size, shuffle, seed, shard)
    return _file_records(listing, index, image_size, shuffle, seed, shard)


def _file_records(listing, index, image_size, shuffle, seed, shard):
    import tensorflow as tf

    paths = np.array(listing.paths, dtype=object)[index].astype(str)
    labels = (listing.labels[index] if listing.labels is not None else np.full(len(index), -1)).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((index, paths, labels))
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


def _prepared_records(listing, index, image_size, shuffle, seed, shard):
    import tensorflow as tf

    info = listing.prepared
    listing.image_size(image_size)
    keep = np.zeros(len(listing), dtype=bool)
    keep[index] = True
    keep_t = tf.constant(keep)
    labels_t = tf.constant(listing.labels if listing.labels is not None else np.full(len(listing), -1), tf.int64)
    files = [str(Path(listing.src) / name) for name in info["shards"]]
    size, have, want = int(info["image_size"]), int(info["channels"]), listing.channels
    per_image = size * size * have * 2
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shard and len(files) >= shard[0]:
        ds, shard = ds.shard(*shard), None
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    spec = {"index": tf.io.FixedLenFeature([], tf.int64), "image": tf.io.FixedLenFeature([], tf.string)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return ex["index"], ex["image"]

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).filter(lambda i, raw: tf.gather(keep_t, i))
    if shard:
        ds = ds.shard(*shard)
    if shuffle:
        ds = ds.shuffle(max(1, min(len(index), SHUFFLE_BYTES // per_image)), seed=seed,
                        reshuffle_each_iteration=True)

    def decode(i, raw):
        image = tf.reshape(tf.cast(tf.io.decode_raw(raw, tf.float16), tf.float32), (size, size, have))
        if want == 3 and have == 1:
            image = tf.repeat(image, 3, axis=-1)
        elif want == 1 and have == 3:
            image = tf.tensordot(image, tf.constant(data._LUMA), axes=1)[..., None]
        return i, image, tf.gather(labels_t, i)

    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


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


# --------------------------------------------------------------------------- prepare


def prepare(src: str, out: str, image_size: int, channels: int | None, labeled: bool, log=print) -> dict:
    """Decode and resize SRC once into sharded TFRecord files under `out` (written to
    `out.partial` and renamed when complete). Returns the description saved as prepared.json."""
    import shutil

    import tensorflow as tf

    from transfer import builtins

    out = Path(out)
    if out.exists():
        raise TransferError(f"{out} already exists; choose a new --out (prepared data is never overwritten)")
    if builtins.is_builtin(src):
        raise TransferError(f"'{src}' is built-in data, already held in memory; prepare image directories or CSVs")
    if is_prepared(src):
        raise TransferError(f"{src} is already a prepared directory")
    listing = list_source(src, labeled, channels)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        n_shards = max(1, math.ceil(len(listing) / SHARD_IMAGES))
        shards = [f"shard-{k:05d}-of-{n_shards:05d}.tfrecord" for k in range(n_shards)]
        written = np.zeros(len(listing), dtype=bool)
        ds = records(listing, np.arange(len(listing)), image_size).map(_position_image)
        writers = [tf.io.TFRecordWriter(str(staging / name)) for name in shards]
        try:
            for i, image in ds.as_numpy_iterator():
                feature = {
                    "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i)])),
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.astype(np.float16).tobytes()])),
                }
                writers[int(i) * n_shards // len(listing)].write(
                    tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                written[i] = True
        finally:
            for w in writers:
                w.close()
        if not written.any():
            raise TransferError(f"no readable images in {src}")
        arrays = {"ids": listing.ids}
        if listing.labels is not None:
            arrays["labels"] = listing.labels
        # Images that failed to decode stay in the index (ids keep their positions) but have no record.
        np.savez(staging / "index.npz", **arrays)
        info = {
            "format": PREPARED_FORMAT, "format_version": PREPARED_VERSION, "source": str(src),
            "image_size": int(image_size), "channels": int(listing.channels), "dtype": "float16",
            "images": int(written.sum()), "listed": len(listing), "shards": shards,
            "class_names": listing.class_names if labeled else [],
            "skipped": len(listing.skipped) + len(listing.failed),
            "preprocessing": data.preprocessing_contract(image_size, listing.channels),
            "fingerprint": listing.fingerprint(),
        }
        (staging / PREPARED).write_text(json.dumps(info, indent=2))
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if listing.skipped or listing.failed:
        first = (listing.skipped + listing.failed)[0][1]
        log(f"skipped {len(listing.skipped) + len(listing.failed)} unreadable file(s); first: {first}")
    return info

