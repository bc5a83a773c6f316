"""Decode and resize a source once into sharded TFRecord files (a streaming source)."""

from __future__ import annotations

import time

from pipelines.common import report_skipped
from transfer import prepared
from transfer.config import PrepareConfig


def run(cfg: PrepareConfig, log=print) -> dict:
    """Write cfg.out (shards, index.npz, prepared.json); returns the prepared.json contents."""
    start = time.perf_counter()
    info, skipped = prepared.prepare(cfg.src, cfg.out, cfg.image_size, cfg.channels, cfg.labeled)
    report_skipped(skipped, log)
    seconds = time.perf_counter() - start
    log(f"prepared {info['images']} images ({info['image_size']}x{info['image_size']}x{info['channels']}, "
        f"{len(info['shards'])} shard(s){', labeled' if cfg.labeled else ''}) in {seconds:.1f}s -> {cfg.out}")
    return info
