"""The data layer's entry and exit: sources in, `tf.data` batches out (bounded memory).

Every image enters through `open_source` (or `open_for_prediction`), which
gives a `Listing`: built-in data decoded into memory (`transfer.builtins`), a
prepared directory (`transfer.prepared`), or a directory / CSV manifest listed
without decoding (`transfer.listing`). Every batch leaves through `dataset`,
`records` or `TrainImages`: images held in memory are gathered a whole batch at
a time; files are decoded on the fly by `transfer.data.decode_image` (the same
preprocessing contract everywhere), in parallel, epoch after epoch, never all at
once, unless `decode_once` first decoded them into a file read back a batch at a
time (`transfer.decoded`: for training that passes over them many times). Files
that fail to decode while streaming (truncated data behind a valid header) are
dropped and counted in `Listing.failed`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from transfer import builtins, data, decoded, distribute, listing, prepared, stopping
from transfer.errors import TransferError
from transfer.listing import Listing

# A stream whose length is unknown (files that fail to decode are dropped) ends its first epoch by
# running out of data: that is how Keras learns an epoch's length, not a problem worth a warning.
warnings.filterwarnings("ignore", message="Your input ran out of data")


def open_source(src: str, labeled: bool, image_size: int, channels: int | None = None,
                class_names: list[str] | None = None) -> Listing:
    """A source as a Listing. Built-in data is decoded into memory and, for pretraining
    (unlabeled), comes without its test split; anything else is listed and streamed.

    Args:
        class_names: fix the class order (e.g. a trained classifier's); labels outside it are refused.
    """
    if builtins.is_builtin(src):
        found = builtins.load(src, image_size, channels, labeled, split="all" if labeled else "pretrain")
    elif prepared.is_prepared(src):
        found = prepared.list_prepared(src, labeled, channels)
    else:
        found = listing.list_files(src, labeled, channels)
    found.check_size(image_size)
    return found.with_classes(class_names) if labeled else found


def open_for_prediction(src: str, image_size: int, channels: int) -> Listing:
    """Every image of SRC to classify (a built-in's test split included)."""
    if builtins.is_builtin(src):
        return builtins.load(src, image_size, channels, labeled=False, split="all")
    return open_source(src, False, image_size, channels)


def decode_once(source: Listing, index, image_size: int, passes: float, log=print) -> tuple[Listing, np.ndarray]:
    """(listing, index) to stream the images of `source` at `index` from, `passes` times
    over: a file source decoded once into a temporary file (see `transfer.decoded`) when
    that is more than one pass (decoding them once costs about one pass); a built-in,
    prepared or already decoded source as it is (its pixels need no decoding)."""
    if passes <= 1 or source.images is not None or source.prepared or source.decoded:
        return source, index
    return decoded.build(source, index, image_size, records, log) or (source, index)


# --------------------------------------------------------------------------- batches


def _order(ds, buffer: int, shuffle: bool, seed: int, shard):
    """This worker's part (`shard` = (num_shards, index)), shuffled afresh every epoch."""
    if shard:
        ds = ds.shard(*shard)
    return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True) if shuffle else ds


def dataset(source: Listing, index, image_size: int, *, batch_size: int, shuffle: bool = False, seed: int = 0,
            with_labels: bool = False, shard: tuple[int, int] | None = None, forever: bool = False):
    """A `tf.data.Dataset` of batches of float32 images (and int64 labels with `with_labels`)
    of the images at `index`; `shard` streams a disjoint part (one per worker).

    `forever`: an endless stream of passes (reshuffled each time with `shuffle`) cut into
    full batches, as FixMatch's samplers draw: every batch has the same shape, so a
    training step is traced once (a last, smaller batch of each pass would trace it again)."""
    index = np.sort(np.asarray(index, dtype=np.int64))
    if source.images is not None or source.decoded:  # shuffle positions, then load a whole batch at once
        source.check_size(image_size)
        ds = _order(tf.data.Dataset.from_tensor_slices((index, source.label_array()[index])), len(index), shuffle,
                    seed, shard)
        ds = ds.repeat() if forever else ds
        ds = ds.batch(batch_size, drop_remainder=forever).map(_batch_loader(source),
                                                              num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(_image_label if with_labels else _image_only)
    else:
        ds = records(source, index, image_size, shuffle=shuffle, seed=seed, shard=shard)
        ds = ds.repeat() if forever else ds
        ds = ds.map(_image_label if with_labels else _image_only).batch(batch_size, drop_remainder=forever)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded above
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _batch_loader(source: Listing):
    """(positions, labels) -> (positions, float32 images, labels) of a whole batch: gathered
    from memory, or read from a decoded listing's file."""
    if source.images is not None:
        images = tf.constant(source.images)
        return lambda positions, labels: (positions, tf.gather(images, positions), labels)
    read, size = decoded.reader(source), source.decoded["image_size"]

    def load(positions, labels):
        images = tf.numpy_function(read, [positions], tf.float32, stateful=False)
        images.set_shape((None, size, size, source.channels))
        return positions, images, labels

    return load


def _image_label(position, image, label):
    return image, label


def _image_only(position, image, label):
    return image


def _is_ok(position, image, label, ok):
    return ok


def _drop_ok(position, image, label, ok):
    return position, image, label


def records(source: Listing, index, image_size: int, *, shuffle: bool = False, seed: int = 0, shard=None):
    """Unbatched (position in the listing, float32 image, int64 label or -1) of the images at `index`."""
    index = np.sort(np.asarray(index, dtype=np.int64))
    if source.prepared:
        source.check_size(image_size)
        return prepared.records(source, index, shuffle, seed, shard, _order)
    labels = source.label_array()
    if source.images is not None:
        ds = tf.data.Dataset.from_tensor_slices((index, source.images[index], labels[index]))
        return _order(ds, len(index), shuffle, seed, shard)
    if source.decoded:
        source.check_size(image_size)
        ds = _order(tf.data.Dataset.from_tensor_slices((index, labels[index])), len(index), shuffle, seed, shard)
        return ds.batch(256).map(_batch_loader(source)).unbatch()
    paths = np.array(source.paths, dtype=object)[index].astype(str)
    # Shuffling names, not pixels: a full shuffle costs a few bytes per image.
    ds = _order(tf.data.Dataset.from_tensor_slices((index, paths, labels[index])), len(index), shuffle, seed, shard)
    channels = source.channels
    empty = np.zeros((image_size, image_size, channels), np.float32)

    def decode(path):
        name = path.decode()
        try:
            return data.decode_image(name, image_size, channels), True
        except TransferError as exc:
            source.record_failure(name, str(exc))
            return empty, False

    def load(i, path, label):
        image, ok = tf.numpy_function(decode, [path], (tf.float32, tf.bool), stateful=False)
        image.set_shape((image_size, image_size, channels))
        return i, image, label, ok

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).filter(_is_ok).map(_drop_ok)


def load(source: Listing, index, image_size: int) -> Listing:
    """The images at `index` decoded into memory (small subsets: held-out images, few labels).
    Its `skipped` lists the files that failed to decode now."""
    index = np.sort(np.asarray(index, dtype=np.int64))
    if source.images is not None:
        positions, images = index, source.images[index]
        skipped = []
    else:
        before = len(source.failed)
        parts = []
        for i, image, _ in records(source, index, image_size).batch(256).as_numpy_iterator():
            stopping.check()  # a safe point for a stop signal, between batches
            parts.append((i, image))
        positions = np.concatenate([p for p, _ in parts]) if parts else np.zeros(0, np.int64)
        images = (np.concatenate([x for _, x in parts]) if parts
                  else np.zeros((0, image_size, image_size, source.channels), np.float32))
        skipped = source.failed[before:]
    return source.subset(positions, skipped=list(skipped), images=images)


def load_in_order(source: Listing, positions, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, their positions): the images at `positions` decoded into memory in that order
    (`load` decodes in position order); any that fail to decode are left out of both."""
    loaded = load(source, positions, image_size)
    row = {name: k for k, name in enumerate(loaded.paths)}
    kept = np.array([int(p) for p in positions if source.name(int(p)) in row], dtype=np.int64)
    return loaded.images[np.array([row[source.name(p)] for p in kept], dtype=np.int64)], kept


# --------------------------------------------------------------------------- training images


@dataclass
class TrainImages:
    """Training images as an objective sees them: held in memory or streamed from files.

    Attributes:
        source: the listing the images come from.
        index: which of its images (one epoch, over all workers).
        image_size: height and width.
    """

    source: Listing
    index: np.ndarray
    image_size: int

    @property
    def count(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.source.channels)

    def batches(self, batch_size: int):
        """The images in order, in batches, under the current tf.distribute strategy (see
        `distribute.batches`): held-out images to evaluate (training: `training_batches`)."""
        return distribute.batches(
            lambda b, shard: dataset(self.source, self.index, self.image_size, batch_size=b, shard=shard),
            batch_size, self.count)

    def training_batches(self, batch_size: int, seed: int = 0):
        """(batches, steps per epoch) to train on: endless reshuffled passes cut into full
        batches, ceil(count / batch_size) of them an epoch (as `training.one_iterator` draws
        arrays). Every step has the same shape, so the step is traced once, and no epoch
        ends on a batch of a few images (a batch of one leaves BatchNorm's statistics and a
        contrastive loss nothing to compare). Several workers: each its shard's full batches,
        count // batch_size steps an epoch (`distribute.batches`; steps None)."""
        ds = distribute.batches(
            lambda b, shard: dataset(self.source, self.index, self.image_size, batch_size=b, shuffle=True,
                                     seed=seed, shard=shard, forever=True), batch_size, self.count)
        return ds, (None if distribute.is_multiworker(distribute.current()) else -(-self.count // batch_size))

    def sample(self, n: int) -> np.ndarray:
        """Up to n images, in order (for statistics such as the mean image)."""
        return load(self.source, self.index[:n], self.image_size).images


def in_memory(images: np.ndarray) -> TrainImages:
    """TrainImages over an array held in memory (validation images, tests)."""
    return TrainImages(Listing.of_array(images), np.arange(len(images)), int(images.shape[1]))
