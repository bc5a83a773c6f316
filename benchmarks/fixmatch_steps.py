"""How many FixMatch steps a pretrained start needs, and which selection it does best on, on a
label-budget pipeline's own choice.

FixMatch from the pretrained encoder (`<objective>-finetuned-semi`, through its projection
head) on the N labels each `--selections` strategy chose on that encoder (`--labels N
--selection S`; typiclust unless told), the pool (the images outside the test split) as
unlabeled, at each `--steps` count; every run scored on the pool's labels outside its N chosen
images: never the test split, so that a default chosen among these counts or strategies does
not tune on it. The cells take turns within each seed (the machine is shared and noisy); each
run is its own process, and its FixMatch training time (the row's `train_seconds`; the sum of
`history-semi.csv`'s for a run scored again) is printed beside it. The table pairs each cell
with the first strategy at the largest count over the seeds, with a 95% interval.

`--runs DIR` keeps the run directories (`DIR/<steps>-<seed>` for typiclust,
`DIR/<strategy>-<steps>-<seed>` for another); a finished one found there with the same
settings is scored again instead of trained again (so an interrupted benchmark resumes, and
the runs of an experiment grid with the same settings can be scored by linking them there).

    python benchmarks/fixmatch_steps.py --encoder runs/digits/pretrain-contrastive [--data digits]
        [--labels 10] [--steps 1000,2000] [--selections typiclust,probcover] [--seeds 0,1,2,3,4] [--runs DIR]
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


def config(args, selection: str, steps: int, seed: int, out: str):
    """The fine-tune of one cell: what `transfer experiment` runs for `<objective>-semi` on the
    encoder's `selection` choice, at `steps`."""
    from transfer import artifacts, methods
    from transfer.config import FineTuneConfig

    objective = artifacts.read_manifest(args.encoder, "encoder")["objective"]
    method = methods.parse(f"{objective}-semi")
    return FineTuneConfig(data=args.data, image_size=IMAGE_SIZE[args.data], labels=args.labels,
                          selection=selection, select_encoder=args.encoder, seed=seed, steps=steps, out=out,
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


def worker(args, selection: str, steps: int, seed: int, out: str) -> dict:
    """One cell, trained unless finished at `out`: its pool accuracy outside the chosen images."""
    import numpy as np

    from pipelines import fine_tune
    from transfer import artifacts, budget, features, splits, stream

    cfg = config(args, selection, steps, seed, out)
    row = finished(cfg, Path(out))
    trained = row is None
    if trained:
        row = fine_tune.run(cfg, log=lambda message: None)
    size = IMAGE_SIZE[args.data]
    found = splits.open_labeled(args.data, None, cfg.test_fraction, size, None, log=lambda m: None)
    net = budget.feature_model(args.encoder, cfg.select_readout or "auto")[0]
    chosen = budget.choose(selection, found.source, found.pool, args.labels, seed, net, size)  # as fine-tune does
    scored = np.setdiff1d(found.pool, chosen)
    model, _ = artifacts.load_model_run(out, "classifier")
    probs, truth, _ = features.compute(model, stream.ImageSet(found.source, scored, size))
    seconds = row.get("train_seconds")
    classes = len(np.unique(np.asarray(found.source.labels)[chosen]))  # read only to say what the choice covers
    return {"accuracy": float(np.mean(probs.argmax(axis=1) == truth)), "classes": classes,
            "train_seconds": float(seconds) if seconds not in (None, "") else None, "trained_here": trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="a pretrain run directory")
    parser.add_argument("--data", default="digits", choices=sorted(IMAGE_SIZE))
    parser.add_argument("--labels", type=int, default=10, help="labels in all, chosen on the encoder")
    parser.add_argument("--steps", default="1000,2000", help="FixMatch step counts, comma-separated")
    parser.add_argument("--selections", default="typiclust", help="strategies choosing the labels, comma-separated")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--runs", help="keep the run directories here (finished ones are scored, not retrained)")
    parser.add_argument("--worker", nargs=3, metavar=("SELECTION", "STEPS", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        selection, steps, seed = args.worker
        print("RESULT " + json.dumps(worker(args, selection, int(steps), int(seed), args.out)), flush=True)
        os._exit(0)  # a live tf.data iterator can hang the interpreter's exit
    import pandas as pd

    from transfer import stats

    counts = [int(s) for s in args.steps.split(",")]
    strategies = args.selections.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = [(strategy, steps) for strategy in strategies for steps in counts]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs or tmp)
        runs.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            for strategy, steps in cells:
                name = f"{steps}-{seed}" if strategy == "typiclust" else f"{strategy}-{steps}-{seed}"
                proc = subprocess.run([sys.executable, __file__, "--encoder", args.encoder, "--data", args.data,
                                       "--labels", str(args.labels), "--worker", strategy, str(steps), str(seed),
                                       "--out", str(runs / name)], capture_output=True, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if not found:
                    raise SystemExit(f"{strategy}, {steps} steps, seed {seed} failed: "
                                     f"{proc.stderr.strip().splitlines()[-3:]}")
                results[strategy, steps, seed] = json.loads(found[0][7:])
                print(f"  {strategy}, {steps} steps, seed {seed}: {results[strategy, steps, seed]}", flush=True)
    base = (strategies[0], max(counts))
    print(f"\n{args.data}, {args.labels} labels in all chosen on {args.encoder}, FixMatch from that encoder, seeds "
          f"{args.seeds}: accuracy on the pool's labels outside the choice (never the test split)\n")
    print(f"| selection | steps | classes labeled | pool accuracy % (mean ± std) | per seed | "
          f"vs {base[0]} at {base[1]} steps [95% CI] | train s/run (median) |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for cell in cells:
        acc = pd.Series({s: 100 * results[(*cell, s)]["accuracy"] for s in seeds})
        d = stats.difference(acc, pd.Series({s: 100 * results[(*base, s)]["accuracy"] for s in seeds}))
        vs = "" if cell == base else f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
        times = [results[(*cell, s)]["train_seconds"] for s in seeds
                 if results[(*cell, s)]["train_seconds"] is not None]
        classes = statistics.mean(results[(*cell, s)]["classes"] for s in seeds)
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {cell[0]} | {cell[1]} | {classes:.1f} | {acc.mean():.1f} ± {spread:.1f} | "
              f"{', '.join(f'{a:.1f}' for a in acc)} | {vs} | "
              f"{statistics.median(times) if times else float('nan'):.0f} |")

if __name__ == "__main__":
    main()
