"""Decode and resize a source once into sharded TFRecord files (a streaming source; read by
`transfer.prepared`)."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.common import report_skipped
from transfer import builtins, data, listing, outputs, prepared, stopping, stream
from transfer.config import PrepareConfig
from transfer.errors import TransferError
from transfer.progress import Progress


def run(cfg: PrepareConfig, log=print) -> dict:
    """Write cfg.out (shards, index.npz, prepared.json); returns the prepared.json contents."""
    start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() or out.is_symlink():
        raise TransferError(f"{out} already exists; choose a new --out (prepared data is never overwritten)")
    outputs.writable_folder(out.parent, f"--out {out} cannot be written")  # before any image is read
    if builtins.is_builtin(cfg.src):
        raise TransferError(f"'{cfg.src}' is built-in data, already held in memory; prepare image directories or CSVs")
    if prepared.is_prepared(cfg.src):
        raise TransferError(f"{cfg.src} is already a prepared directory")
    source = listing.list_files(cfg.src, cfg.labeled, cfg.channels)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        info = _write(source, staging, cfg.image_size, log)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report_skipped(source.skipped + source.failed, log)
    log(f"prepared {info['images']} images ({info['image_size']}x{info['image_size']}x{info['channels']}, "
        f"{len(info['shards'])} shard(s){', labeled' if cfg.labeled else ''}) in "
        f"{time.perf_counter() - start:.1f}s -> {cfg.out}")
    return info


def _write(source: listing.Listing, staging: Path, image_size: int, log) -> dict:
    """The shards, index.npz and prepared.json of `source` in `staging`."""
    n_shards = max(1, math.ceil(len(source) / prepared.SHARD_IMAGES))
    shards = [f"shard-{k:05d}-of-{n_shards:05d}.tfrecord" for k in range(n_shards)]
    written = np.zeros(len(source), dtype=bool)
    writers = [tf.io.TFRecordWriter(str(staging / name)) for name in shards]
    progress = Progress(log, len(source), "prepared", unit="image", every=max(1, min(len(source) // 5, 10_000)))
    try:
        for i, image, _ in stream.records(source, np.arange(len(source)), image_size).as_numpy_iterator():
            stopping.check()  # a safe point for a stop signal, between images
            feature = {
                "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i)])),
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.astype(np.float16).tobytes()])),
            }
            writers[int(i) * n_shards // len(source)].write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            written[i] = True
            progress.update(int(i) + 1)
        progress.update(len(source))  # the last line, when the last files failed to decode
    finally:
        for w in writers:
            w.close()
    if not written.any():
        raise TransferError(f"no readable images in {source.src}")
    arrays = {"ids": source.ids, **({"labels": source.labels} if source.labels is not None else {})}
    # Images that failed to decode stay in the index (ids keep their positions) but have no record.
    np.savez(staging / "index.npz", **arrays)
    info = {
        "format": prepared.FORMAT, "format_version": prepared.FORMAT_VERSION, "source": str(source.src),
        "image_size": int(image_size), "channels": int(source.channels), "dtype": "float16",
        "images": int(written.sum()), "listed": len(source), "shards": shards,
        "class_names": source.class_names, "skipped": source.unreadable(),
        "preprocessing": data.preprocessing_contract(image_size, source.channels),
        "fingerprint": source.fingerprint(),
    }
    outputs.write_json(staging / prepared.PREPARED, info)
    return info
