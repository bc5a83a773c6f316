"""Prepared sources: a directory or CSV decoded and resized once into sharded TFRecord files.

Layout of a prepared directory: `shard-KKKKK-of-NNNNN.tfrecord` files of
`tf.train.Example`s {index: the image's position in the listing, image: float16
pixels}, `index.npz` (content ids of the original files, labels), and
`prepared.json` (format, size, channels, shards, class names, counts). Positions
keep the content ids, so test splits and leakage checks are the same as for the
original files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from transfer import data, stream
from transfer.errors import TransferError
from transfer.stream import Listing, is_prepared, list_source

PREPARED = "prepared.json"
PREPARED_FORMAT = "transfer-prepared"
PREPARED_VERSION = 1
SHARD_IMAGES = 4096  # images per TFRecord shard: many shards let workers read disjoint files
SHUFFLE_BYTES = 64 * 2**20  # the shuffle buffer of a prepared source holds at most this many pixel bytes


def list_prepared(src: str, labeled: bool, channels: int | None, class_names) -> Listing:
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


def records(listing, index, image_size, shuffle, seed, shard):
    import tensorflow as tf

    info = listing.prepared
    listing.image_size(image_size)
    keep = np.zeros(len(listing), dtype=bool)
    keep[index] = True
    keep_t = tf.constant(keep)
    labels_t = tf.constant(listing.label_array())
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


# --------------------------------------------------------------------------- prepare


def _position_image(position, image, label):
    return position, image


def prepare(src: str, out: str, image_size: int, channels: int | None, labeled: bool) -> tuple[dict, list]:
    """Decode and resize SRC once into sharded TFRecord files under `out` (written to
    `out.partial` and renamed when complete).

    Returns:
        (the description saved as prepared.json, (path, reason) of every unreadable file).
    """
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
        ds = stream.records(listing, np.arange(len(listing)), image_size).map(_position_image)
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
    return info, listing.skipped + listing.failed

