"""The main job on built-in data: pretrain, fine-tune three ways, compare."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import keras

from pipelines import compare, fine_tune, pretrain
from transfer import methods
from transfer.config import CompareConfig, DemoConfig, FineTuneConfig, PretrainConfig, make
from transfer.progress import Progress

BASELINES = ("scratch",)  # beside the pretrained encoder's default recipe: the baseline a competent user runs
EXPECTED = "about 3 minutes on 2 CPU cores"  # benchmarks/demo_time.py measures it


def run(cfg: DemoConfig, log=print):
    """Pretrain on `digits` (its held-out test images excluded), then fine-tune the
    pretrained encoder with the default recipe and the augmented from-scratch baseline at
    each label budget and seed, and print the comparison. Everything goes under one new
    directory."""
    out = Path(cfg.out or f"runs/demo-{datetime.now():%Y%m%d-%H%M%S}")
    table_path = out / "results.csv"
    timings = {}
    log(f"transfer demo: pretrain, fine-tune, compare on built-in digits ({EXPECTED}, on the defaults)")

    t = time.perf_counter()
    log(f"[1/3] pretraining an encoder on digits (default objective) -> {out / 'encoder'}")
    pretrain.run(PretrainConfig(data="digits", out=str(out / "encoder"), arch=cfg.arch,
                                image_size=cfg.image_size, results=str(table_path),
                                **_given(epochs=cfg.pretrain_epochs)), log=_indent(log))
    timings["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    variants = [("pretrained", {"encoder": str(out / "encoder")}),
                *((name, methods.parse(name).settings) for name in BASELINES)]
    total = len(variants) * len(cfg.labels_per_class) * len(cfg.seeds)
    log(f"[2/3] {total} fine-tunes: pretrained (default recipe), {', '.join(BASELINES)} x "
        f"labels per class {list(cfg.labels_per_class)} x seeds {list(cfg.seeds)}")
    progress = Progress(log, total, "  run", every=1, bar=False)
    done = 0
    for budget in cfg.labels_per_class:
        for seed in cfg.seeds:
            for short, settings in variants:
                done += 1
                keras.backend.clear_session()  # fit in a loop leaks graph state otherwise
                row = fine_tune.run(
                    make(FineTuneConfig, data="digits", labels_per_class=budget, seed=seed, arch=cfg.arch,
                         image_size=cfg.image_size, results=str(table_path),
                         **_given(epochs=cfg.fine_tune_epochs), **settings,
                         out=str(out / "fine-tune" / f"{budget}-{seed}-{short}")),
                    log=lambda _msg: None,
                )
                progress.update(done, note=f" {row['method']:<21} labels/class={budget:<3} seed={seed} "
                                           f"test accuracy {row['test_accuracy']:.3f} in {row['seconds']:.1f}s")
    timings["fine-tune"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"[3/3] comparing ({table_path})")
    table = compare.run(CompareConfig(results=str(table_path)), log=log)
    timings["compare"] = time.perf_counter() - t
    log("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        + f" (total {sum(timings.values()):.0f}s)")
    return table, timings


def _given(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


def _indent(log):
    return lambda msg: log("  " + msg)
