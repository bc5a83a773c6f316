"""The data layer's entry and exit: sources in, `tf.data` batches out (bounded memory).

Every image enters through `open_source` (or `open_for_prediction`), which
gives a `Listing` whose `store` holds its pixels: built-in data decoded into
memory (`transfer.builtins`), a prepared directory (`transfer.prepared`), or a
directory / CSV manifest listed without decoding (`transfer.listing`). Every
batch leaves through `dataset`, `records` or an `ImageSet` (some images of a
listing at one size: training images, a test split, an unlabeled pool): a store
that reads a whole batch at once (memory, a decoded-once file) is read a batch at
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

from transfer import builtins, decoded, distribute, listing, prepared, stopping
from transfer.listing import InMemory, Listing, order

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
    if passes <= 1 or not source.store.decodes_per_pass:
        return source, index
    return decoded.build(source, index, image_size, log) or (source, index)


# --------------------------------------------------------------------------- batches


def dataset(source: Listing, index, image_size: int, *, batch_size: int, shuffle: bool = False, seed: int = 0,
            with_labels: bool = False, shard: tuple[int, int] | None = None, forever: bool = False):
    """A `tf.data.Dataset` of batches of float32 images (and int64 labels with `with_labels`)
    of the images at `index`; `shard` streams a disjoint part (one per worker).

    `forever`: an endless stream of passes (reshuffled each time with `shuffle`) cut into
    full batches, as FixMatch's samplers draw: every batch has the same shape, so a
    training step is traced once (a last, smaller batch of each pass would trace it again)."""
    index = np.sort(np.asarray(index, dtype=np.int64))
    source.check_size(image_size)
    read = source.store.batch_reader(source)
    if read is not None:  # shuffle positions, then read a whole batch at once
        ds = order(tf.data.Dataset.from_tensor_slices((index, source.label_array()[index])), len(index), shuffle,
                   seed, shard)
        ds = ds.repeat() if forever else ds
        ds = ds.batch(batch_size, drop_remainder=forever).map(read, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(_image_label if with_labels else _image_only)
    else:
        ds = source.store.records(source, index, image_size, shuffle, seed, shard)
        ds = ds.repeat() if forever else ds
        ds = ds.map(_image_label if with_labels else _image_only).batch(batch_size, drop_remainder=forever)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded above
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _image_label(position, image, label):
    return image, label


def _image_only(position, image, label):
    return image


def records(source: Listing, index, image_size: int, *, shuffle: bool = False, seed: int = 0, shard=None):
    """Unbatched (position in the listing, float32 image, int64 label or -1) of the images at `index`."""
    source.check_size(image_size)
    return source.store.records(source, np.sort(np.asarray(index, dtype=np.int64)), image_size, shuffle, seed, shard)


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
    return source.subset(positions, skipped=list(skipped), store=InMemory(images))


def load_in_order(source: Listing, positions, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, their positions): the images at `positions` decoded into memory in that order
    (`load` decodes in position order); any that fail to decode are left out of both."""
    loaded = load(source, positions, image_size)
    row = {name: k for k, name in enumerate(loaded.paths)}
    kept = np.array([int(p) for p in positions if source.name(int(p)) in row], dtype=np.int64)
    return loaded.images[np.array([row[source.name(p)] for p in kept], dtype=np.int64)], kept


# --------------------------------------------------------------------------- image sets


@dataclass(frozen=True)
class ImageSet:
    """Some images of a listing, at one size: what a pretraining trains on, a test split, an
    unlabeled pool, a labeled budget. Immutable; every pass over it goes through its store.

    Attributes:
        listing: the listing the images come from (its store holds the pixels).
        positions: which of its images.
        image_size: height and width they are read at.
    """

    listing: Listing
    positions: np.ndarray
    image_size: int

    @classmethod
    def of(cls, listing: Listing, positions=None, image_size: int | None = None) -> "ImageSet":
        """The images of `listing` at `positions` (all by default), at `image_size` (by default
        the size its images are held at in memory)."""
        positions = np.arange(len(listing)) if positions is None else np.asarray(positions, dtype=np.int64)
        return cls(listing, positions, int(image_size if image_size is not None else listing.images.shape[1]))

    @classmethod
    def of_arrays(cls, images: np.ndarray, labels: np.ndarray | None = None) -> "ImageSet":
        """Arrays held in memory (validation images, labeled images, features), labels optional."""
        return cls.of(Listing.of_array(images, labels=labels), image_size=int(images.shape[1]))

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.listing.channels)

    @property
    def ids(self) -> np.ndarray:
        return self.listing.ids[self.positions]

    @property
    def failed(self) -> list[tuple[str, str]]:
        """Files of its listing that failed to decode while streaming, so far."""
        return self.listing.failed

    def batches(self, batch_size: int, with_labels: bool = False):
        """The images in order, in batches (with their labels), in this process."""
        return dataset(self.listing, self.positions, self.image_size, batch_size=batch_size, with_labels=with_labels)

    def eval_batches(self, batch_size: int):
        """The images in order, in batches, under the current tf.distribute strategy (see
        `distribute.batches`): held-out images to evaluate."""
        return distribute.batches(
            lambda b, shard: dataset(self.listing, self.positions, self.image_size, batch_size=b, shard=shard),
            batch_size, len(self))

    def stream(self, batch_size: int, seed: int, with_labels: bool = False, shard=None):
        """An endless stream of reshuffled passes cut into full batches (this worker's `shard`)."""
        return dataset(self.listing, self.positions, self.image_size, batch_size=batch_size, shuffle=True, seed=seed,
                       with_labels=with_labels, shard=shard, forever=True)

    def train_batches(self, batch_size: int, seed: int = 0, with_labels: bool = False):
        """(batches, steps per epoch) to train on: endless reshuffled passes cut into full
        batches, ceil(count / batch_size) of them an epoch. Every step has the same shape, so
        the step is traced once, and no epoch ends on a batch of a few images (a batch of one
        leaves BatchNorm's statistics and a contrastive loss nothing to compare). Several
        workers: each its shard's full batches, count // batch_size steps an epoch
        (`distribute.batches`; steps None)."""
        ds = distribute.batches(lambda b, shard: self.stream(b, seed, with_labels, shard), batch_size, len(self))
        return ds, (None if distribute.is_multiworker(distribute.current()) else -(-len(self) // batch_size))

    def records(self):
        """Unbatched (position in the listing, float32 image, int64 label or -1), in order."""
        return records(self.listing, self.positions, self.image_size)

    def load(self) -> Listing:
        """Its images decoded into memory (small sets: held-out images, few labels); the files
        that failed to decode now are its `skipped`."""
        return load(self.listing, self.positions, self.image_size)

    def sample(self, n: int) -> np.ndarray:
        """Up to n images, in order (for statistics such as the mean image)."""
        return load(self.listing, self.positions[:n], self.image_size).images
