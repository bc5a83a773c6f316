"""Reading prepared sources: a directory or CSV decoded and resized once into sharded TFRecord files.

Layout of a prepared directory (written by `transfer prepare`, `pipelines/prepare.py`):
`shard-KKKKK-of-NNNNN.tfrecord` files of `tf.train.Example`s {index: the image's
position in the listing, image: float16 pixels}, `index.npz` (content ids of
the original files, labels), and `prepared.json` (format, size, channels,
shards, class names, counts). Positions keep the content ids, so test splits
and leakage checks are the same as for the original files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer import data
from transfer.errors import TransferError
from transfer.listing import Listing, order

PREPARED = "prepared.json"
FORMAT = "transfer-prepared"
FORMAT_VERSION = 1
SHARD_IMAGES = 4096  # images per TFRecord shard: many shards let workers read disjoint files
PARSE_BATCH = 256  # records parsed and decoded together
SHUFFLE_BYTES = 64 * 2**20  # the shuffle buffer of a prepared source holds at most this many pixel bytes


def is_prepared(src: str) -> bool:
    return (Path(src) / PREPARED).is_file()


def list_prepared(src: str, labeled: bool, channels: int | None) -> Listing:
    info = json.loads((Path(src) / PREPARED).read_text())
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise TransferError(f"{src}: not a prepared directory of this version ({PREPARED})")
    index = np.load(Path(src) / "index.npz", allow_pickle=False)
    labels = index["labels"] if "labels" in index.files else None
    if labeled and labels is None:
        raise TransferError(f"{src} was prepared without labels; run `transfer prepare --labeled` on a labeled source")
    if channels is not None and int(channels) != int(info["channels"]) and {int(channels), int(info["channels"])} != {1, 3}:
        raise TransferError(f"{src} holds {info['channels']}-channel images; they cannot be converted to {channels}")
    return Listing(src=src, paths=[], ids=index["ids"], labels=labels if labeled else None,
                   class_names=list(info.get("class_names", [])) if labeled else [],
                   channels=int(channels or info["channels"]), store=Prepared(info))


@dataclass(frozen=True)
class Prepared:
    """The listing's pixels in a prepared directory's shards (a `transfer.listing.Store`)."""

    info: dict
    decodes_per_pass = False
    folder = None
    held = "streamed from prepared shards"

    def check_size(self, src: str, image_size: int) -> None:
        size = int(self.info["image_size"])
        if size != int(image_size):
            raise TransferError(f"{src} was prepared at {size}x{size}; use --image-size {size} or prepare it "
                                f"again. Received: image_size={image_size}")

    def batch_reader(self, listing: Listing):
        return None

    def records(self, listing: Listing, index, image_size: int, shuffle: bool, seed: int, shard):
        """Unbatched (position, float32 image, int64 label or -1) of the images at `index`.

        Shards are divided between workers by file when there are enough of them, else by
        record, then by the data layer's shard-and-shuffle step (`transfer.listing.order`)."""
        info = self.info
        keep = np.zeros(len(listing), dtype=bool)
        keep[index] = True
        keep_t = tf.constant(keep)
        labels_t = tf.constant(listing.label_array())
        files = [str(Path(listing.src) / name) for name in info["shards"]]
        size, have, want = int(info["image_size"]), int(info["channels"]), listing.channels
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shard and len(files) >= shard[0]:
            ds, shard = ds.shard(*shard), None
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
        spec = {"index": tf.io.FixedLenFeature([], tf.int64), "image": tf.io.FixedLenFeature([], tf.string)}

        # Records are parsed and decoded a batch at a time, one op per batch, not per record
        # (58 -> 33 us an image streamed, side by side: `benchmarks/stream_decode.py`'s prepared
        # cell); the filter and the shuffle still see single records, as the data layer's
        # shard-and-shuffle needs.
        def parse(records):
            ex = tf.io.parse_example(records, spec)
            return ex["index"], ex["image"]

        ds = ds.batch(PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        if not keep.all():
            ds = ds.filter(lambda i, raw: tf.gather(keep_t, i))
        ds = order(ds, max(1, min(len(index), SHUFFLE_BYTES // (size * size * have * 2))), shuffle, seed, shard)

        def decode(i, raw):
            images = tf.reshape(tf.cast(tf.io.decode_raw(raw, tf.float16), tf.float32), (-1, size, size, have))
            if want == 3 and have == 1:
                images = tf.repeat(images, 3, axis=-1)
            elif want == 1 and have == 3:
                images = tf.tensordot(images, tf.constant(data.LUMA), axes=1)[..., None]
            return i, images, tf.gather(labels_t, i)

        return ds.batch(PARSE_BATCH).map(decode, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
