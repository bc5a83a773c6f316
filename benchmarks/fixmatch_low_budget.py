"""FixMatch at the lowest budgets: a few labels in all, drawn blindly, and what keeps it above
the supervised recipe it extends.

Each setting fine-tunes with `--labels N --selection random` (N labels drawn blindly from
the pool: at 1-2 per class some classes get none) and the whole pool (the images outside
the test split) as unlabeled, and is scored on the pool's labels without the N drawn ones:
never on the test split, so that choosing a default among these settings does not tune on
it. The settings take turns within each seed (the machine is shared and noisy); each run is
its own process.

- `supervised (no pool)`: the same fine-tune without the pool (scale, and the floor FixMatch
  must not end below);
- `labeled batch = the labels (before)`: FixMatch as the toolkit ran it before session 13,
  its labeled batch capped at the number of labels, so mu times fewer unlabeled images a
  step (`--batch-size N`; no distribution alignment);
- `FixMatch --no-align`: a full labeled batch of 32 every step (the labels repeat), 224 unlabeled;
- `FixMatch --align` (the default since): the same with distribution alignment of the pseudo-labels.

    python benchmarks/fixmatch_low_budget.py [--data animals] [--labels 10] [--seeds 0,1] [--encoder random]
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

IMAGE_SIZE = {"digits": 16, "animals": 28}


def settings(labels: int) -> dict:
    """name: FineTuneConfig fields over the defaults."""
    out = {"supervised (no pool)": {"unlabeled": None}}
    if labels < 32:
        out[f"labeled batch = the {labels} labels (before)"] = {"batch_size": labels, "align": False}
    out["FixMatch --no-align"] = {"align": False}
    out["FixMatch --align"] = {"align": True}
    return out


def worker(data: str, setting: str, labels: int, seed: int, encoder: str, steps: int, out: str) -> dict:
    """One fine-tune: its accuracy on the pool's images outside its labels, and its seconds."""
    import numpy as np

    from pipelines import fine_tune
    from transfer import artifacts, budget, splits, stream
    from transfer.config import FineTuneConfig, make

    size = IMAGE_SIZE[data]
    fields = {"unlabeled": data, "steps": steps, **settings(labels)[setting]}
    if encoder == "random":
        fields.update(freeze="none", image_size=size)
    cfg = make(FineTuneConfig, data=data, encoder=encoder, labels=labels, selection="random", seed=seed, out=out,
               results=str(Path(out).parent / "rows.csv"), **fields)
    row = fine_tune.run(cfg, log=lambda message: None)
    found = splits.open_labeled(data, None, cfg.test_fraction, size, None, log=lambda m: None)
    chosen = budget.choose("random", found.source, found.pool, labels, seed, None, size)  # as fine-tune draws
    scored = np.setdiff1d(found.pool, chosen)
    model, _ = artifacts.load_model_run(out, "classifier")
    hits = 0
    for _, images, truth in stream.records(found.source, scored, size).batch(512).as_numpy_iterator():
        hits += int((model.predict_on_batch(images).argmax(axis=1) == truth).sum())
    return {"accuracy": hits / len(scored), "seconds": float(row["seconds"]), "mask_rate": row.get("mask_rate"),
            "labeled_classes": int(row["labeled_classes"]), "test": float(row["test_accuracy"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="animals", choices=sorted(IMAGE_SIZE))
    parser.add_argument("--labels", type=int, default=10, help="labels in all, drawn blindly")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--encoder", default="random", help="random (scratch-semi) or a pretrain run directory")
    parser.add_argument("--only", help="comma-separated setting names to run (default: all)")
    parser.add_argument("--worker", nargs=2, metavar=("SETTING", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        got = worker(args.data, args.worker[0], args.labels, int(args.worker[1]), args.encoder, args.steps, args.out)
        print("RESULT " + json.dumps(got), flush=True)
        os._exit(0)  # a live tf.data iterator can hang the interpreter's exit
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in settings(args.labels) if not args.only or n in args.only.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for i, setting in enumerate(names):
                proc = subprocess.run([sys.executable, __file__, "--data", args.data, "--labels", str(args.labels),
                                       "--steps", str(args.steps), "--encoder", args.encoder, "--worker", setting,
                                       str(seed), "--out", f"{tmp}/{seed}-{i}"], capture_output=True, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if not found:
                    raise SystemExit(f"{setting} seed {seed} failed: {proc.stderr.strip().splitlines()[-3:]}")
                results[setting, seed] = json.loads(found[0][7:])
                print(f"  {setting}, seed {seed}: {results[setting, seed]}", flush=True)
    print(f"\n{args.data}, {args.labels} labels in all (drawn blindly), encoder {args.encoder}, {args.steps} steps, "
          f"seeds {args.seeds}: accuracy on the pool's labels outside the draw (never the test split)\n")
    print("| setting | pool accuracy % (mean ± std) | per seed | classes labeled | final mask rate | s/run |")
    print("|---|---:|---|---:|---:|---:|")
    for setting in names:
        runs = [results[setting, s] for s in seeds]
        acc = [100 * r["accuracy"] for r in runs]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        masks = [float(r["mask_rate"]) for r in runs if r["mask_rate"] not in (None, "")]
        print(f"| {setting} | {statistics.mean(acc):.1f} ± {spread:.1f} | {', '.join(f'{a:.1f}' for a in acc)} | "
              f"{', '.join(str(r['labeled_classes']) for r in runs)} | "
              f"{statistics.mean(masks) if masks else float('nan'):.2f} | "
              f"{statistics.median(r['seconds'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
