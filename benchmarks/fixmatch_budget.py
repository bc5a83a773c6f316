"""What FixMatch's knobs trade: accuracy on the unlabeled pool against seconds per run.

`transfer fine-tune --unlabeled` at its defaults (mu 7, 2,000 steps, SGD at
--semi-learning-rate 0.03) and with fewer steps, fewer unlabeled images per step (`--mu`) or a larger
learning rate, on the same labeled draws; the supervised fine-tune (no pool) for scale.
Each run is scored on the labels of the unlabeled pool, without the images drawn as
labels: never on the test split, so that choosing among these settings does not tune
on it. Each run is its own process (several models in one process slow each other
down); the table gives the mean and std over the seeds, the median seconds per run
(the row's `seconds`) and that time over the supervised fine-tune's.

    python benchmarks/fixmatch_budget.py [--budgets 2,10] [--seeds 0,1,2] [--encoder random]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # name: FineTuneConfig fields over the defaults
    "supervised (no pool)": {"unlabeled": None},
    "FixMatch defaults": {},
    "--steps 1000": {"steps": 1000},
    "--steps 1000 --semi-learning-rate 0.06": {"steps": 1000, "semi_learning_rate": 0.06},
    "--mu 3 --semi-learning-rate 0.06": {"mu": 3, "semi_learning_rate": 0.06},
    "--mu 3 --steps 1000 --semi-learning-rate 0.09": {"mu": 3, "steps": 1000, "semi_learning_rate": 0.09},
}


def worker(setting: str, budget: int, seed: int, encoder: str, out: str) -> dict:
    """One fine-tune: its accuracy on the pool's other images and its seconds."""
    import numpy as np

    from pipelines import fine_tune
    from transfer import artifacts, builtins, data
    from transfer.config import FineTuneConfig, make

    fields = {"unlabeled": "digits", **SETTINGS[setting]}
    cfg = make(FineTuneConfig, data="digits", image_size=16, encoder=encoder, freeze="none", labels_per_class=budget,
               seed=seed, out=out, results=str(Path(out).parent / "rows.csv"), **fields)
    row = fine_tune.run(cfg, log=lambda message: None)
    digits = builtins.load("digits", 16, None, True, split="all")
    pool, _ = data.split_test(digits.labels, digits.ids, cfg.test_fraction)  # as fine-tune splits it
    chosen = data.sample_per_class(digits.labels, pool, budget, seed, digits.class_names)
    scored = np.setdiff1d(pool, chosen)
    model, _ = artifacts.load_model_run(out, "classifier")
    predicted = model.predict(digits.images[scored], batch_size=512, verbose=0).argmax(axis=1)
    return {"accuracy": float(np.mean(predicted == digits.label_array()[scored])), "seconds": float(row["seconds"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="2,10", help="labels per class, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--encoder", default="random", help="random (scratch-semi) or a pretrain run directory")
    parser.add_argument("--worker", nargs=3, metavar=("SETTING", "BUDGET", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.encoder, args.out)))
        os._exit(0)  # a live tf.data iterator can hang the interpreter's exit
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            for seed in seeds:  # the settings take turns (the machine is shared and noisy)
                for i, setting in enumerate(SETTINGS):
                    out = subprocess.run([sys.executable, __file__, "--worker", setting, str(budget), str(seed),
                                          "--encoder", args.encoder, "--out", f"{tmp}/{budget}-{seed}-{i}"],
                                         capture_output=True, text=True, check=True).stdout
                    results[setting, budget, seed] = json.loads(out.strip().splitlines()[-1])
    print(f"FixMatch on digits 16x16, encoder {args.encoder}: accuracy on the unlabeled pool's labels "
          f"(never the test split), seeds {args.seeds}; seconds per run (median) and over the supervised run's")
    print(f"{'setting':44s} {'labels/class':>12s} {'pool accuracy %':>16s} {'s/run':>6s} {'x supervised':>12s}")
    for budget in budgets:
        base = statistics.median(results["supervised (no pool)", budget, s]["seconds"] for s in seeds)
        for setting in SETTINGS:
            runs = [results[setting, budget, s] for s in seeds]
            acc = [100 * r["accuracy"] for r in runs]
            spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
            seconds = statistics.median(r["seconds"] for r in runs)
            print(f"{setting:44s} {budget:12d} {statistics.mean(acc):10.1f} ± {spread:3.1f} {seconds:6.1f} "
                  f"{seconds / base:11.1f}x")


if __name__ == "__main__":
    main()
