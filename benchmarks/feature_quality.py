"""Are the pretrained features worth having? Pretraining cost and feature quality, per data
set and pretraining setting, beside raw pixels and a random encoder of the same architecture.

For each data set (built-ins with labels: digits, animals) and each setting (PretrainConfig
fields over the defaults), one process pretrains on the data set's images outside its test
split, and the features of those images are scored by `transfer.evaluation`: weighted 20-NN
and the linear probe with every label, and 1-NN from 1 and 4 labels per class (5 draws).

Choosing settings must not look at the test split, so by default (`--on validation`) the
scores are on a validation split *of the pretraining images* (a quarter of each class, by
content id), the rest being the labeled reference. `--on test` scores on the test split
(for reporting a choice already made). The table gives pretraining seconds and images/s
(the results row's), the k-NN error as a ratio of the pixels' (below 1: fewer errors),
and the 1-NN gain over pixels at 4 labels per class.

    python benchmarks/feature_quality.py [--data digits,animals] [--settings defaults,...] [--on validation]
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

IMAGE_SIZE = {"digits": 16, "animals": 28}
SETTINGS = {  # name: PretrainConfig fields over the defaults
    "defaults": {},
    "vicreg": {"objective": "vicreg"},
    "epochs-300": {"epochs": 300},
    "vicreg-epochs-300": {"objective": "vicreg", "epochs": 300},
    "batch-64": {"batch_size": 64},
    "autoencoder": {"objective": "autoencoder"},
}
READOUTS = ("avg", "multi")


def worker(data: str, setting: str, on: str, out: str) -> list[dict]:
    import numpy as np

    from pipelines import pretrain
    from transfer import artifacts, builtins, evaluation, features, models, training
    from transfer import data as datalib
    from transfer.architectures import Block
    from transfer.config import PretrainConfig

    size = IMAGE_SIZE[data]
    cfg = PretrainConfig(data=data, out=out, image_size=size, results=str(Path(out).parent / "rows.csv"),
                         plots=False, **SETTINGS[setting])
    row = pretrain.run(cfg, log=lambda message: None)
    encoder, manifest = artifacts.load_model_run(out, "encoder")
    everything = builtins.load(data, size, None, True, split="all")
    pool, test = datalib.split_test(everything.labels, everything.ids, 0.2) if everything.test_mask is None else (
        np.flatnonzero(~everything.test_mask), np.flatnonzero(everything.test_mask))
    if on == "validation":  # a quarter of the pretraining images of each class, by content id
        ref, val = datalib.split_test(everything.labels[pool], everything.ids[pool], 0.25)
        ref, scored = pool[ref], pool[val]
    else:
        ref, scored = pool, test
    training.set_seed(0)
    random = models.build_encoder((size, size, everything.channels), [Block(**b) for b in manifest["arch"]["blocks"]])
    rows = []
    n_classes = len(everything.class_names)
    for name, model, readout in [("pixels", None, ""), *[("random", random, r) for r in READOUTS],
                                 *[(setting, encoder, r) for r in READOUTS]]:
        net = None if model is None else models.build_features(model, readout, frozen=True)
        ref_f, ref_y, _ = features.compute(net, everything, ref, size)
        val_f, val_y, _ = features.compute(net, everything, scored, size)
        got = evaluation.scores(ref_f, ref_y, val_f, val_y, n_classes, budgets=(1, 4), draws=5, probe=False)
        rows.append({"features": name, "readout": readout, **got})
    for r in rows:
        r.update(seconds=row["seconds"], images_per_second=row.get("images_per_second"),
                 knn_ratio=evaluation.error_ratio(r["knn"], rows[0]["knn"]), nn1_4_gain=r["nn1_4"] - rows[0]["nn1_4"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits,animals")
    parser.add_argument("--settings", default="defaults,vicreg")
    parser.add_argument("--on", choices=("validation", "test"), default="validation")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data, setting, out = json.loads(args.worker)
        print("ROWS " + json.dumps(worker(data, setting, args.on, out)))
        os._exit(0)  # skip TensorFlow's slow teardown
    print(f"| data | setting | features | readout | 20-NN % | k-NN error vs pixels | 1-NN@1 % | 1-NN@4 % "
          f"| 1-NN@4 vs pixels | pretraining s | images/s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data.split(","):
            for setting in args.settings.split(","):
                out = os.path.join(tmp, f"{data}-{setting}")
                proc = subprocess.run([sys.executable, __file__, "--on", args.on, "--worker",
                                       json.dumps([data, setting, out])], capture_output=True, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
                if not found:
                    print(f"| {data} | {setting} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
                    continue
                for r in json.loads(found[0][5:]):
                    pre = r["features"] not in ("pixels", "random")
                    print(f"| {data} | {setting} | {r['features']} | {r['readout']} | {100 * r['knn']:.1f} | "
                          f"{r['knn_ratio']:.2f}x | {100 * r['nn1_1']:.1f} ± {100 * r['nn1_1_std']:.1f} | "
                          f"{100 * r['nn1_4']:.1f} ± {100 * r['nn1_4_std']:.1f} | {100 * r['nn1_4_gain']:+.1f} | "
                          f"{r['seconds']:.0f} | {r['images_per_second'] or 0:.0f} |" if pre else
                          f"| {data} | {setting} | {r['features']} | {r['readout']} | {100 * r['knn']:.1f} | "
                          f"{r['knn_ratio']:.2f}x | {100 * r['nn1_1']:.1f} ± {100 * r['nn1_1_std']:.1f} | "
                          f"{100 * r['nn1_4']:.1f} ± {100 * r['nn1_4_std']:.1f} | {100 * r['nn1_4_gain']:+.1f} | | |",
                          flush=True)


if __name__ == "__main__":
    main()
