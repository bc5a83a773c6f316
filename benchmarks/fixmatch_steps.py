"""How many FixMatch steps a pretrained start needs, on a label-budget pipeline's own choice.

FixMatch from the pretrained encoder (`<objective>-finetuned-semi`, through its projection
head) on the N labels typiclust chose on that encoder (`--labels N --selection typiclust`),
the pool (the images outside the test split) as unlabeled, at each `--steps` count; every run
scored on the pool's labels outside its N chosen images: never the test split, so that a
default chosen among these counts does not tune on it. The step counts take turns within each
seed (the machine is shared and noisy); each run is its own process, and its FixMatch training
time (the row's `train_seconds`; the sum of `history-semi.csv`'s for a run scored again) is
printed beside it. The table pairs each count with the
largest over the seeds, with a 95% interval.

`--runs DIR` keeps the run directories (`DIR/<steps>-<seed>`); a finished one found there with
the same settings is scored again instead of trained again (so an interrupted benchmark
resumes, and the runs of an experiment grid with the same settings can be scored by linking
them there).

    python benchmarks/fixmatch_steps.py --encoder runs/digits/pretrain-contrastive [--data digits]
        [--labels 10] [--steps 1000,2000] [--seeds 0,1,2,3,4] [--runs DIR]
"""

from __future__ import annotations

import argparse
import csv
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
SAME = ("data", "image_size", "encoder", "labels", "selection", "select_encoder", "seed", "steps", "unlabeled")


def config(args, steps: int, seed: int, out: str):
    """The fine-tune of one cell: what `transfer experiment` runs for `<objective>-semi` on the
    encoder's typiclust choice, at `steps`."""
    from transfer import artifacts, methods
    from transfer.config import FineTuneConfig, make

    objective = artifacts.read_manifest(args.encoder, "encoder")["objective"]
    method = methods.parse(f"{objective}-semi")
    return make(FineTuneConfig, data=args.data, image_size=IMAGE_SIZE[args.data], labels=args.labels,
                selection="typiclust", select_encoder=args.encoder, seed=seed, steps=steps, out=out,
                results=str(Path(out).parent / "rows.csv"), **method.fields(args.encoder, args.data))


def finished(cfg, out: Path) -> dict | None:
    """The row-like facts of a finished run at `out` with cfg's settings (None: not there)."""
    if not (out / "classifier.keras").is_file() or not (out / "config.json").is_file():
        return None
    saved = json.loads((out / "config.json").read_text())
    if any(str(saved.get(k)) != str(getattr(cfg, k)) and Path(str(saved.get(k))).resolve() !=
           Path(str(getattr(cfg, k))).resolve() for k in SAME):
        raise SystemExit(f"{out} holds a run with other settings; give another --runs")
    with open(out / "history-semi.csv", newline="") as f:  # its FixMatch epochs' seconds
        return {"train_seconds": sum(float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds"))}


def worker(args, steps: int, seed: int, out: str) -> dict:
    """One cell, trained unless finished at `out`: its pool accuracy outside the chosen images."""
    import numpy as np

    from pipelines import fine_tune
    from transfer import artifacts, budget, features, splits, stream

    cfg = config(args, steps, seed, out)
    row = finished(cfg, Path(out))
    trained = row is None
    if trained:
        row = fine_tune.run(cfg, log=lambda message: None)
    size = IMAGE_SIZE[args.data]
    found = splits.open_labeled(args.data, None, cfg.test_fraction, size, None, log=lambda m: None)
    net = budget.feature_model(args.encoder, cfg.budget.select_readout or "auto")[0]
    chosen = budget.choose("typiclust", found.source, found.pool, args.labels, seed, net, size)  # as fine-tune does
    scored = np.setdiff1d(found.pool, chosen)
    model, _ = artifacts.load_model_run(out, "classifier")
    probs, truth, _ = features.compute(model, stream.ImageSet(found.source, scored, size))
    seconds = row.get("train_seconds")
    return {"accuracy": float(np.mean(probs.argmax(axis=1) == truth)),
            "train_seconds": float(seconds) if seconds not in (None, "") else None, "trained_here": trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="a pretrain run directory")
    parser.add_argument("--data", default="digits", choices=sorted(IMAGE_SIZE))
    parser.add_argument("--labels", type=int, default=10, help="labels in all, chosen by typiclust on the encoder")
    parser.add_argument("--steps", default="1000,2000", help="FixMatch step counts, comma-separated")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--runs", help="keep the run directories here (finished ones are scored, not retrained)")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("STEPS", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args, *args.worker, args.out)), flush=True)
        os._exit(0)  # a live tf.data iterator can hang the interpreter's exit
    import pandas as pd

    from transfer import stats

    counts = [int(s) for s in args.steps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs or tmp)
        runs.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            for steps in counts:
                proc = subprocess.run([sys.executable, __file__, "--encoder", args.encoder, "--data", args.data,
                                       "--labels", str(args.labels), "--worker", str(steps), str(seed),
                                       "--out", str(runs / f"{steps}-{seed}")], capture_output=True, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if not found:
                    raise SystemExit(f"{steps} steps, seed {seed} failed: {proc.stderr.strip().splitlines()[-3:]}")
                results[steps, seed] = json.loads(found[0][7:])
                print(f"  {steps} steps, seed {seed}: {results[steps, seed]}", flush=True)
    top = max(counts)
    print(f"\n{args.data}, {args.labels} labels in all chosen by typiclust on {args.encoder}, FixMatch from that "
          f"encoder, seeds {args.seeds}: accuracy on the pool's labels outside the choice (never the test split)\n")
    print(f"| steps | pool accuracy % (mean ± std) | per seed | vs {top} steps [95% CI] | train s/run (median) |")
    print("|---:|---:|---|---:|---:|")
    for steps in counts:
        acc = pd.Series({s: 100 * results[steps, s]["accuracy"] for s in seeds})
        d = stats.difference(acc, pd.Series({s: 100 * results[top, s]["accuracy"] for s in seeds}))
        vs = "" if steps == top else f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
        times = [results[steps, s]["train_seconds"] for s in seeds if results[steps, s]["train_seconds"] is not None]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {steps} | {acc.mean():.1f} ± {spread:.1f} | {', '.join(f'{a:.1f}' for a in acc)} | {vs} | "
              f"{statistics.median(times) if times else float('nan'):.0f} |")


if __name__ == "__main__":
    main()
