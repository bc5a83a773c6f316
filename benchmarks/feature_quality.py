"""Are the pretrained features worth having? Pretraining cost and feature quality, per data
set and pretraining setting, beside raw pixels and a random encoder of the same architecture.

For each data set (the labeled built-ins: digits, animals, patches, textures, faces; `--data
all`) and each setting (PretrainConfig fields over the defaults), one process pretrains on the
data set's images outside its test
split, and the features of those images are scored by `transfer.evaluation`: weighted 20-NN
and the linear probe with every label, and 1-NN from 1 and 4 labels per class (5 draws).

Choosing settings must not look at the test split, so by default (`--on validation`) the
scores are on the pretraining images themselves, 4-fold: each quarter of every class (by
content id) is scored in turn with the other three quarters as the labeled reference, and
the four scores are averaged (every image scored once: a quarter of the noise of one
split; on digits one error is 0.07 points). `--on test` scores the test split with every
pretraining image as reference (for reporting a choice already made). The table gives pretraining seconds and images/s
(the results row's), the k-NN error as a ratio of the pixels' (below 1: fewer errors),
and the 1-NN gain over pixels at 4 labels per class.

`--encoders DIR,...` scores encoders already pretrained (pretrain run directories, e.g. one
pretraining run longer than the default) by the same protocol instead of pretraining: its
setting is the directory, its seconds the training time its history.csv records. Score them
on the data they were pretrained on (outside its test split), or the folds hold images the
encoder never saw beside ones it did.

    python benchmarks/feature_quality.py [--data digits,animals] [--settings defaults,...] [--on validation]
    python benchmarks/feature_quality.py --data animals --encoders runs/a,runs/b
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

IMAGE_SIZE = {"digits": 16, "animals": 28, "patches": 28, "fills": 28, "textures": 32, "faces": 25}  # the labeled built-ins
FOLDS = 4
SETTINGS = {  # name: PretrainConfig fields over the defaults
    "defaults": {},
    "crop-0.7": {"crop": 0.7},
    "crop-0.3": {"crop": 0.3},
    "blur": {"blur": 0.5},
    "crop-0.7-blur": {"crop": 0.7, "blur": 0.5},
    "temperature-0.1": {"temperature": 0.1},
    "temperature-0.5": {"temperature": 0.5},
    "wide": {"filters": (64, 128, 256)},
    "projector-512-128": {"projector": (512, 128)},
    "epochs-50": {"epochs": 50},
    "epochs-60": {"epochs": 60},
    "crop-0.7-blur-epochs-60": {"crop": 0.7, "blur": 0.5, "epochs": 60},
    "vicreg": {"objective": "vicreg"},
    "epochs-300": {"epochs": 300},
    "vicreg-epochs-300": {"objective": "vicreg", "epochs": 300},
    "byol": {"objective": "byol"},
    "batch-64": {"batch_size": 64},
    "autoencoder": {"objective": "autoencoder"},
    "no-blur": {"blur": 0.0},
    "jitter-0.3": {"jitter": 0.3},
    "jitter-0.3-no-blur": {"jitter": 0.3, "blur": 0.0},
    "jitter-0": {"jitter": 0.0},
    "kmeans": {"start": "kmeans", "epochs": 0},  # k-means filters alone, no objective trained
    "start-kmeans": {"start": "kmeans"},  # the default objective from k-means filters (the default since it was measured)
    "start-random": {"start": "random"},  # the default objective from random weights (the default before)
}
READOUTS = ("avg", "multi", "flatten")


def folds(labels, ids, k: int = FOLDS):
    """Fold of each image: within each class, ordered by content id, every k-th image."""
    fold = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        fold[members[np.lexsort((members, ids[members]))]] = np.arange(len(members)) % k
    return fold


def pretrained(out: str) -> dict:
    """The cost fields of an encoder pretrained before: training seconds from its history,
    images/s from the images it saw in them."""
    import pandas as pd

    from transfer import artifacts

    manifest = artifacts.read_manifest(out, "encoder")
    history = pd.read_csv(Path(out) / "history.csv")
    seconds = float(history["seconds"].sum())
    seen = manifest.get("data", {}).get("images", 0) * len(history)
    return {"seconds": seconds, "images_per_second": seen / seconds if seconds else None}


def worker(data: str, setting: str, seed: int, on: str, out: str, pretrained_before: bool = False) -> list[dict]:
    """The rows of the encoder in `out`: pretrained there by `setting` first, unless `pretrained_before`."""
    from pipelines import pretrain
    from transfer import artifacts, builtins, evaluation, features, models, stream, training
    from transfer import data as datalib
    from transfer.architectures import Block
    from transfer.config import PretrainConfig

    size = IMAGE_SIZE[data]
    if pretrained_before:
        row = pretrained(out)
    else:
        cfg = PretrainConfig(data=data, out=out, image_size=size, results=str(Path(out).parent / "rows.csv"),
                             plots=False, seed=seed, **SETTINGS[setting])
        row = pretrain.run(cfg, log=lambda message: None)
    encoder, manifest = artifacts.load_model_run(out, "encoder")
    everything = builtins.load(data, size, None, True, split="all")
    pool, test = datalib.split_test(everything.labels, everything.ids, 0.2) if everything.test_mask is None else (
        np.flatnonzero(~everything.test_mask), np.flatnonzero(everything.test_mask))
    if on == "validation":  # each quarter of the pretraining images scored against the other three
        fold = folds(everything.labels[pool], everything.ids[pool])
        parts = [(pool[fold != k], pool[fold == k]) for k in range(FOLDS)]
    else:
        parts = [(pool, test)]
    training.set_seed(0)
    random = models.build_encoder((size, size, everything.channels), [Block(**b) for b in manifest["arch"]["blocks"]])
    rows = []
    n_classes = len(everything.class_names)
    projector = artifacts.load_projector(out, manifest)  # the two-view objectives' head: one readout more
    for name, model, readout in [("pixels", None, ""), *[("random", random, r) for r in READOUTS],
                                 *[(setting, encoder, r) for r in READOUTS],
                                 *([(setting, encoder, "projector")] if projector is not None else [])]:
        net = None if model is None else models.build_features(model, readout, True, projector)
        f, y, positions = features.compute(net, stream.ImageSet(everything, np.concatenate([pool, test]), size))
        where = {p: i for i, p in enumerate(positions)}
        got = [evaluation.scores(f[[where[i] for i in ref]], y[[where[i] for i in ref]],
                                 f[[where[i] for i in scored]], y[[where[i] for i in scored]], n_classes,
                                 budgets=(1, 4), draws=5, probe=False) for ref, scored in parts]
        rows.append({"features": name, "readout": readout, **{k: float(np.mean([g[k] for g in got])) for k in got[0]},
                     "rankme": evaluation.rankme(f[[where[i] for i in pool]])})  # no label read
    random_knn = {r["readout"]: r["knn"] for r in rows if r["features"] == "random"}
    for r in rows:
        r.update(seconds=row["seconds"], images_per_second=row.get("images_per_second"),
                 knn_ratio=evaluation.error_ratio(r["knn"], rows[0]["knn"]), nn1_4_gain=r["nn1_4"] - rows[0]["nn1_4"],
                 knn_ratio_random=(evaluation.error_ratio(r["knn"], random_knn[r["readout"]])
                                   if r["readout"] in random_knn else None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits,animals", help="comma-separated, or all: " + ",".join(IMAGE_SIZE))
    parser.add_argument("--settings", default="defaults,vicreg")
    parser.add_argument("--seeds", default="0", help="pretraining seeds: one row group each")
    parser.add_argument("--on", choices=("validation", "test"), default="validation")
    parser.add_argument("--encoders", help="pretrain run directories to score instead of pretraining (comma-separated)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data, setting, seed, out, pretrained_before = json.loads(args.worker)
        print("ROWS " + json.dumps(worker(data, setting, seed, args.on, out, pretrained_before)))
        os._exit(0)  # skip TensorFlow's slow teardown
    print("| data | setting | seed | features | readout | 20-NN % | k-NN error vs pixels | vs random (same readout) "
          "| 1-NN@1 % | 1-NN@4 % | 1-NN@4 vs pixels | RankMe | pretraining s | images/s |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for data in (IMAGE_SIZE if args.data == "all" else args.data.split(",")):
            jobs = ([(d, 0, d) for d in args.encoders.split(",")] if args.encoders else
                    [(s, int(n), None) for s in args.settings.split(",") for n in args.seeds.split(",")])
            for setting, seed, encoder_dir in jobs:
                out = encoder_dir or os.path.join(tmp, f"{data}-{setting}-{seed}")
                proc = subprocess.run([sys.executable, __file__, "--on", args.on, "--worker",
                                       json.dumps([data, setting, seed, out, bool(encoder_dir)])],
                                      capture_output=True, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
                if not found:
                    print(f"| {data} | {setting} | {seed} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
                    continue
                for r in json.loads(found[0][5:]):
                    pre = r["features"] not in ("pixels", "random")
                    vs_random = f"{r['knn_ratio_random']:.2f}x" if pre and r["knn_ratio_random"] is not None else ""
                    print(f"| {data} | {setting} | {seed} | {r['features']} | {r['readout']} | {100 * r['knn']:.1f} | "
                          f"{r['knn_ratio']:.2f}x | {vs_random} | {100 * r['nn1_1']:.1f} ± {100 * r['nn1_1_std']:.1f} | "
                          f"{100 * r['nn1_4']:.1f} ± {100 * r['nn1_4_std']:.1f} | {100 * r['nn1_4_gain']:+.1f} | "
                          f"{r['rankme']:.1f} | {r['seconds']:.0f} | {r['images_per_second'] or 0:.0f} |" if pre else
                          f"| {data} | {setting} | {seed} | {r['features']} | {r['readout']} | {100 * r['knn']:.1f} | "
                          f"{r['knn_ratio']:.2f}x | | {100 * r['nn1_1']:.1f} ± {100 * r['nn1_1_std']:.1f} | "
                          f"{100 * r['nn1_4']:.1f} ± {100 * r['nn1_4_std']:.1f} | {100 * r['nn1_4_gain']:+.1f} | "
                          f"{r['rankme']:.1f} | | |",
                          flush=True)


if __name__ == "__main__":
    main()
