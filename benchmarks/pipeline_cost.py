"""Benchmark: the wall time of each label-budget pipeline's fine-tune, side by side, and the
pretraining it amortizes.

The pipelines of the budget tables (docs/results.md), at one total budget on a built-in:
FixMatch from scratch on a blind draw and on the pixels' typiclust choice (the baselines
without pretraining), and, with a pretrained encoder, the default recipe and FixMatch from
the encoder, both on the encoder's own typiclust choice (through its projection head when it
has one), the latter also at 1,000 steps (half the default: benchmarks/fixmatch_steps.py).
Each run is `transfer fine-tune` in a fresh process (several models in one process slow each
other down), the pipelines taking turns for every seed (the machine is shared and
noisy: a ratio is only worth quoting when both sides ran in the same stretch). The time is the
results row's `seconds`: the whole command, selection, loading and evaluation included; its
`cpu_seconds` (the processor time of the run's process, which the time it waited behind other
jobs does not inflate) is printed beside it, with its ratio.

The encoder's pretraining time (the sum of its history's epoch seconds) is printed beside it,
and the pretrained pipelines' time with it amortized over 1, 5 and 20 tasks that reuse the
encoder (each new labeled task, or each new round of labels, is one).

    python benchmarks/pipeline_cost.py --encoder runs/digits/pretrain-contrastive [--data digits]
        [--image-size 16] [--labels 10] [--seeds 0,1] [--steps N] [--only 2,4,5]

Prints a markdown table: pipeline, seconds per run (median over seeds), over FixMatch from
scratch on the pixels' choice, train seconds, the amortized times, then CPU seconds per run
and their ratio to FixMatch from scratch's.
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

BASELINE = "FixMatch from scratch, pixels' typiclust"
PIPELINES = {  # name: (method, selection, selection's features: None = the encoder's, FixMatch steps: None = --steps)
    "FixMatch from scratch, blind draw": ("scratch-semi", "random", None, None),
    BASELINE: ("scratch-semi", "typiclust", "pixels", None),
    "default recipe, encoder's typiclust": ("OBJECTIVE", "typiclust", None, None),
    "FixMatch from the encoder, encoder's typiclust": ("OBJECTIVE-semi", "typiclust", None, None),
    "FixMatch from the encoder, 1,000 steps, encoder's typiclust": ("OBJECTIVE-semi", "typiclust", None, 1000),
}
TASKS = (1, 5, 20)


def worker(pipeline: str, args, seed: int, out: str) -> dict:
    """One fine-tune, as `transfer experiment` runs the pipeline's cell: its row's times."""
    from pipelines import fine_tune
    from transfer import artifacts, methods
    from transfer.config import FineTuneConfig, make

    name, how, features, steps = PIPELINES[pipeline]
    steps = steps or args.steps
    objective = artifacts.read_manifest(args.encoder, "encoder")["objective"]
    method = methods.parse(name.replace("OBJECTIVE", objective))
    cfg = make(FineTuneConfig, data=args.data, image_size=args.image_size, labels=args.labels, selection=how,
               select_encoder=features, seed=seed, out=out, results=str(Path(out).parent / "rows.csv"),
               **({"steps": steps} if steps else {}), **method.fields(args.encoder, args.data))
    row = fine_tune.run(cfg, log=lambda message: None)
    return {"seconds": float(row["seconds"]), "train_seconds": float(row.get("train_seconds") or 0.0),
            "cpu_seconds": float(row["cpu_seconds"])}


def pretrain_seconds(encoder: str) -> float:
    """The encoder's pretraining time: the sum of its epochs' seconds."""
    with open(Path(encoder) / "history.csv", newline="") as f:
        return sum(float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="a pretrain run directory")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--labels", type=int, default=10, help="the total label budget")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, help="FixMatch's steps (default: fine-tune's)")
    parser.add_argument("--only", help="the pipelines to run, by their 1-based place in PIPELINES (e.g. 2,4,5)")
    parser.add_argument("--worker", nargs=2, metavar=("PIPELINE", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args, int(args.worker[1]), args.out)))
        os._exit(0)  # a live tf.data iterator can hang the interpreter's exit
    seeds = [int(s) for s in args.seeds.split(",")]
    common = ["--encoder", args.encoder, "--data", args.data, "--image-size", str(args.image_size),
              "--labels", str(args.labels), *(["--steps", str(args.steps)] if args.steps else [])]
    chosen = [p for i, p in enumerate(PIPELINES, 1) if not args.only or str(i) in args.only.split(",")]
    if BASELINE not in chosen:
        sys.exit("--only must keep pipeline 2 (FixMatch from scratch on the pixels' choice): the ratios are to it")
    runs: dict[str, list[dict]] = {p: [] for p in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for i, pipeline in enumerate(chosen):  # taking turns
                out = subprocess.run([sys.executable, __file__, "--worker", pipeline, str(seed), *common,
                                      "--out", f"{tmp}/{seed}-{i}"], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{pipeline}, seed {seed} failed:\n{out.stderr[-2000:]}")
                runs[pipeline].append(json.loads(out.stdout.strip().splitlines()[-1]))
    pretrain = pretrain_seconds(args.encoder)
    base = statistics.median(r["seconds"] for r in runs[BASELINE])
    cpu_base = statistics.median(r["cpu_seconds"] for r in runs[BASELINE])
    print(f"fine-tune wall time on {args.data} at {args.labels} labels in all, seeds {args.seeds}, one process a "
          f"run, taking turns; the encoder ({args.encoder}) pretrained in {pretrain:.0f} s\n")
    print("| pipeline | s/run | x FixMatch from scratch | train s | " + " | ".join(
        f"s/task over {n} task{'s' * (n > 1)}" for n in TASKS) + " | CPU s/run | CPU x FixMatch from scratch |")
    print("|---|---|---|---|" + "---|" * len(TASKS) + "---|---|")
    for pipeline, rows in runs.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        train = statistics.median(r["train_seconds"] for r in rows)
        pretrained = PIPELINES[pipeline][0].startswith("OBJECTIVE")
        amortized = [seconds + pretrain / n if pretrained else seconds for n in TASKS]
        cpu = statistics.median(r["cpu_seconds"] for r in rows)
        print(f"| {pipeline} | {seconds:.0f} | {seconds / base:.2f}x | {train:.0f} | "
              + " | ".join(f"{a:.0f}" for a in amortized) + f" | {cpu:.0f} | {cpu / cpu_base:.2f}x |")


if __name__ == "__main__":
    main()
