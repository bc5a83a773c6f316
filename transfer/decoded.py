"""Decode once, read many times: the pixels of a streamed file source, decoded and resized
once into one float16 file on disk, for training that passes over the same images many
times (pretraining's epochs, FixMatch's pool).

Decoding a file (open, read, Pillow, resize) costs about 200 µs a small image on one
core, far more than a step of a small encoder spends on it: streamed from files,
FixMatch on 16x16 digits took 3.5x as long per step as from memory. Read back from
this file a whole batch at a time (one positional read per image, no decoding), it
costs a few µs an image (`python benchmarks/stream_decode.py`).

Memory stays bounded: the file is read with `os.preadv`, never mapped, so a batch is
all the process holds. The file lives in a temporary directory (`$TMPDIR`), removed
when the listing that owns it is garbage collected or the process exits; it is not
written when the disk lacks room for it (twice its size free), and the source is then
streamed as before. A stop signal removes it too; the folder of a process killed
outright (SIGKILL) is removed by the next run that decodes (`transfer.stopping`). Pixels are stored as float16, as prepared shards store them.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from transfer import stopping
from transfer.errors import TransferError
from transfer.listing import Listing, batched_records

DTYPE = np.dtype(np.float16)


def nbytes(n: int, image_size: int, channels: int) -> int:
    return n * image_size * image_size * channels * DTYPE.itemsize


@dataclass(frozen=True)
class Decoded:
    """The listing's pixels decoded once into `path` at `image_size` (a `transfer.listing.Store`),
    in the temporary `folder` (removed with it)."""

    path: str
    image_size: int
    folder: object
    decodes_per_pass = False
    held = "streamed, decoded once"

    def check_size(self, src: str, image_size: int) -> None:
        if self.image_size != int(image_size):
            raise TransferError(f"{src} was decoded at {self.image_size}x{self.image_size}. "
                                f"Received: image_size={image_size}")

    def records(self, listing: Listing, index, image_size: int, shuffle: bool, seed: int, shard):
        return batched_records(listing, index, shuffle, seed, shard, self.batch_reader(listing))

    def batch_reader(self, listing: Listing):
        read, shape = reader(self.path, self.image_size, listing.channels), (None, self.image_size,
                                                                           self.image_size, listing.channels)

        def load(positions, labels):
            images = tf.numpy_function(read, [positions], tf.float32, stateful=False)
            images.set_shape(shape)
            return positions, images, labels

        return load


def build(source: Listing, index, image_size: int, log=print) -> tuple[Listing, np.ndarray] | None:
    """The images of file source `source` at `index` decoded once (streamed from its store)
    into a temporary file: (a listing over it, the index into that listing), or None when
    the disk lacks room. Files that fail to decode are dropped, and recorded in both
    listings' `failed`."""
    index = np.sort(np.asarray(index, dtype=np.int64))
    size = nbytes(len(index), image_size, source.channels)
    folder = stopping.temporary_directory("transfer-decoded-")
    if shutil.disk_usage(folder.name).free < 2 * size:
        log(f"not decoding {source.src} once: {size / 2**20:.0f} MiB would not fit in {folder.name}; "
            "decoding every pass instead")
        folder.cleanup()
        return None
    start, path, kept = time.perf_counter(), os.path.join(folder.name, "images.f16"), []
    with open(path, "wb") as out:
        records = source.store.records(source, index, image_size, False, 0, None)
        for positions, images, _ in records.batch(256).as_numpy_iterator():
            stopping.check()
            out.write(images.astype(DTYPE).tobytes())
            kept.append(positions)
    kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    decoded = source.subset(kept, skipped=list(source.skipped), failed=list(source.failed),
                            store=Decoded(path, int(image_size), folder))
    log(f"decoded {len(kept)} images of {source.src} once ({image_size}x{image_size}x{source.channels}, "
        f"{nbytes(len(kept), image_size, source.channels) / 2**20:.1f} MiB on disk) in "
        f"{time.perf_counter() - start:.1f}s")
    return decoded, np.arange(len(kept))


def reader(path: str, size: int, channels: int):
    """A function: int64 positions -> float32 (n, H, W, C) images read from the file at `path`."""
    shape, row = (size, size, channels), nbytes(1, size, channels)

    def read(positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), *shape), DTYPE)
        fd = os.open(path, os.O_RDONLY)
        try:
            for k, p in enumerate(positions):
                os.preadv(fd, [out[k]], int(p) * row)
        finally:
            os.close(fd)
        return out.astype(np.float32)

    return read
