"""Labeling in rounds: the cold-start rule every round against the classifier-aware rule from
round 2 (issue #50), through the commands a user runs.

For each data set and seed: round 1 chooses `--rounds`' first budget in all with `select
--selection typiclust` on the pretrained encoder, "labels" it (the pool's own labels stand in
for the annotator) and fine-tunes the default recipe on it. Every later round adds images up
to its budget, chosen either by typiclust again (`--exclude` the labeled ones: the cold-start
rule, blind to the classifier) or by `--selection margin --model <the last round's run>`
(typiclust's clusters, from each the image the last classifier is least sure of), then
fine-tunes on everything labeled so far. Both rules start from the same round 1 of a seed, so
their difference at each round is paired over seeds (95% t interval).

The pool is the data set's images outside its test split, written as PNG class folders (the
commands read the selections back from CSV; the folder names stand in for the annotator), the
test split likewise; test accuracy is reported.

    python benchmarks/labeling_rounds.py --data digits --encoder runs/enc-digits [--rounds 10,20,40]
        [--seeds 0,1,2,3,4] [--unlabeled]

`--unlabeled` fine-tunes by FixMatch on the pool instead (much slower).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def transfer(*args) -> None:
    done = subprocess.run([sys.executable, "-c", "from cli import main; main()", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"transfer {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def write_split(data: str, size: int, folder: Path) -> tuple[Path, Path]:
    """The built-in's pool (outside its test split) and test split as PNG class folders."""
    import numpy as np
    from PIL import Image

    from transfer import builtins

    listing = builtins.load(data, size, None, True, "all")
    images, labels = listing.store.images, listing.labels
    test = listing.test_mask
    if test is None:
        from transfer.data import DEFAULT_TEST_FRACTION, split_test

        mask = np.zeros(len(labels), bool)
        mask[split_test(labels, listing.ids, DEFAULT_TEST_FRACTION)[1]] = True
        test = mask
    for i, (image, label) in enumerate(zip(images, labels)):
        where = folder / ("test" if test[i] else "pool") / listing.class_names[label]
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(np.clip(image[..., 0], 0, 1) * 255).astype(np.uint8)).save(where / f"{i}.png")
    return folder / "pool", folder / "test"


def label(chosen: Path) -> Path:
    """The annotator: each chosen image gets its class folder's name (select wrote path,label
    with the label empty, as for a pool without labels)."""
    import pandas as pd

    rows = pd.read_csv(chosen, dtype=str, keep_default_na=False)
    base = chosen.parent
    rows["label"] = [Path(p if Path(p).is_absolute() else base / p).parent.name for p in rows["path"]]
    rows[["path", "label"]].to_csv(chosen, index=False)
    return chosen


def union(first: Path, second: Path, out: Path) -> Path:
    lines = first.read_text().splitlines() + second.read_text().splitlines()[1:]
    out.write_text("\n".join(lines) + "\n")
    return out


def fine_tune(args, labeled: Path, test: Path, out: Path, seed: int, pool: Path) -> float:
    extra = ["--unlabeled", pool] if args.unlabeled else []
    transfer("fine-tune", "--data", labeled, "--test-data", test, "--encoder", args.encoder, "--seed", seed,
             "--out", out, "--results", out.parent / "rows.csv", *extra)
    return json.loads((out / "manifest.json").read_text())["metrics"]["test_accuracy"]


def one_seed(args, pool: Path, test: Path, work: Path, seed: int) -> dict:
    rounds = [int(b) for b in args.rounds.split(",")]
    first = work / f"s{seed}-r1.csv"
    transfer("select", "--data", pool, "--encoder", args.encoder, "--labels", rounds[0],
             "--selection", "typiclust", "--seed", seed, "--out", first, "--no-sheet",
             "--results", work / "select.csv")
    label(first)
    run = work / f"s{seed}-r1"
    accuracy = {(rounds[0], "first"): fine_tune(args, first, test, run, seed, pool)}
    for rule in ("typiclust", "margin"):
        labeled, last = first, run
        for k, budget in enumerate(rounds[1:], start=2):
            more = work / f"s{seed}-{rule}-r{k}-new.csv"
            model = ["--model", last] if rule == "margin" else []
            transfer("select", "--data", pool, "--encoder", args.encoder, "--labels",
                     budget - rounds[k - 2], "--selection", rule, *model, "--exclude", labeled, "--seed", seed,
                     "--out", more, "--no-sheet", "--results", work / "select.csv")
            label(more)
            labeled = union(labeled, more, work / f"s{seed}-{rule}-r{k}.csv")
            last = work / f"s{seed}-{rule}-r{k}"
            accuracy[(budget, rule)] = fine_tune(args, labeled, test, last, seed, pool)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a labeled built-in")
    parser.add_argument("--encoder", required=True, help="a pretrain run directory for that data")
    parser.add_argument("--rounds", default="10,20,40", help="labels in all after each round")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--unlabeled", action="store_true", help="FixMatch on the pool instead of the default recipe")
    args = parser.parse_args()
    import pandas as pd

    from transfer import stats

    size = json.loads((Path(args.encoder) / "manifest.json").read_text())["preprocessing"]["image_size"]
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        pool, test = write_split(args.data, size, Path(tmp) / "images")
        results = {}
        for seed in seeds:
            results[seed] = one_seed(args, pool, test, Path(tmp) / "work", seed)
            print(f"seed {seed}: " + ", ".join(f"{b} {r} {100 * a:.1f}" for (b, r), a in results[seed].items()),
                  flush=True)
    table = pd.DataFrame(results).T * 100  # rows: seeds; columns: (budget, rule)
    rounds = [int(b) for b in args.rounds.split(",")]
    recipe = "FixMatch on the pool" if args.unlabeled else "the default recipe"
    print(f"\n{args.data}, {recipe}, {len(seeds)} seeds: test % after each round; margin - typiclust paired")
    print("| labels in all | typiclust every round | margin from round 2 | margin - typiclust [95% CI] |")
    print("|---:|---:|---:|---:|")
    first = table[(rounds[0], "first")]
    print(f"| {rounds[0]} | {first.mean():.1f} ± {first.std(ddof=1):.1f} | (the same round 1) | |")
    for budget in rounds[1:]:
        cold, warm = table[(budget, "typiclust")], table[(budget, "margin")]
        d = stats.difference(warm, cold)
        print(f"| {budget} | {cold.mean():.1f} ± {cold.std(ddof=1):.1f} | {warm.mean():.1f} ± {warm.std(ddof=1):.1f} "
              f"| {d['diff']:+.1f} [{stats.bound(d['low'])}, {stats.bound(d['high'])}] |")


if __name__ == "__main__":
    main()
