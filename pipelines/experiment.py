"""Run an experiment file: methods x label budgets x seeds, every run a row in one table.

    name = "digits"
    results = "experiments/digits.csv"     # default experiments/<name>.csv
    runs = "runs/digits"                   # default runs/<name>
    seeds = [0, 1, 2, 3, 4]
    labels_per_class = [5, 10, 25, 100]
    methods = ["contrastive", "autoencoder", "random-frozen", "scratch", "pixels-logreg"]

    [pretrain]      # PretrainConfig options for every pretraining
    data = "digits"
    [fine_tune]     # FineTuneConfig options for every fine-tune
    data = "digits"

A method is a baseline (`pixels-logreg`, `random-frozen`, `random-top<K>`,
`scratch`), an objective name (pretrain with it, fine-tune with the defaults:
the default recipe), or `<objective>-frozen|-top<K>|-finetuned`. Each objective
is pretrained once and reused by all its fine-tunes. Paths are relative to the
working directory. Re-running skips the runs whose rows are already in the
table, and reuses finished pretrainings.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

from pipelines import compare, fine_tune, pretrain
from transfer import artifacts, objectives, results
from transfer.config import CompareConfig, FineTuneConfig, PretrainConfig, read_toml
from transfer.errors import TransferError

_TOP = re.compile(r"^(?P<base>.+)-top(?P<k>\d+)$")
KEYS = {"name", "description", "results", "runs", "seeds", "labels_per_class", "methods", "pretrain", "fine_tune"}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    file: str
    dry_run: bool = False


def parse_method(method: str) -> tuple[str | None, dict]:
    """(objective or None, FineTuneConfig overrides) for a method name."""
    baselines = {"pixels-logreg": {"encoder": "pixels"},
                 "random-frozen": {"encoder": "random", "freeze": "all", "unfreeze_top": 0},
                 "scratch": {"encoder": "random", "freeze": "none"}}
    if method in baselines:
        return None, baselines[method]
    top = _TOP.match(method)
    base, overrides = method, {}
    if top:
        base, overrides = top["base"], {"freeze": "all", "unfreeze_top": int(top["k"])}
    elif method.endswith("-frozen"):
        base, overrides = method[: -len("-frozen")], {"freeze": "all", "unfreeze_top": 0}
    elif method.endswith("-finetuned"):
        base, overrides = method[: -len("-finetuned")], {"freeze": "none"}
    if base == "random" and top:
        return None, {"encoder": "random", **overrides}
    if base not in objectives.NAMES:
        raise TransferError(f"unknown method '{method}'. Use a baseline ({', '.join(baselines)}, random-top<K>), "
                            f"an objective ({', '.join(objectives.NAMES)}) or <objective>-frozen|-top<K>|-finetuned")
    return base, overrides


def _section(spec: dict, key: str, cls, path) -> dict:
    section = spec.get(key, {})
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise TransferError(f"{path}: unknown [{key}] option(s) {unknown}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def load(path: str) -> dict:
    spec = read_toml(path, "experiment file")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise TransferError(f"{path}: unknown key(s) {unknown}. Known: {sorted(KEYS)}")
    for key in ("name", "seeds", "labels_per_class", "methods"):
        if not spec.get(key):
            raise TransferError(f"{path}: '{key}' is required")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec["name"]) or spec["name"].startswith("."):
        raise TransferError(f"{path}: name may use letters, digits, '_', '-' and '.'. Received: {spec['name']!r}")
    return spec


def _done(results_path: str, name: str) -> set[tuple[str, str, int]]:
    if not Path(results_path).is_file():
        return set()
    df = results.read_results(results_path)
    if "experiment" not in df:
        return set()
    df = df[(df["experiment"] == name) & (df["command"] == "fine-tune") & (df["status"].fillna("ok") == "ok")]
    return {(m, str(b), int(s)) for m, b, s in zip(df["method"], df["labels_per_class"], df["seed"])}


def run(cfg: ExperimentConfig, log=print):
    import keras

    spec = load(cfg.file)
    name = spec["name"]
    results_path = spec.get("results", f"experiments/{name}.csv")
    runs = Path(spec.get("runs", f"runs/{name}"))
    pre = _section(spec, "pretrain", PretrainConfig, cfg.file)
    fin = _section(spec, "fine_tune", FineTuneConfig, cfg.file)
    budgets = [None if str(b) == "all" else int(b) for b in spec["labels_per_class"]]
    plan = [(m, *parse_method(m)) for m in spec["methods"]]
    done = _done(results_path, name)

    encoders = {}
    for objective in dict.fromkeys(o for _, o, _ in plan if o):
        out = runs / f"pretrain-{objective}"
        try:
            artifacts.read_manifest(out, "encoder")
            log(f"reusing the {objective} encoder in {out}")
        except TransferError:
            log(f"pretraining {objective} -> {out}")
            if not cfg.dry_run:
                keras.backend.clear_session()
                pretrain.run(PretrainConfig(**{**pre, "objective": objective, "out": str(out),
                                               "results": results_path, "experiment": name}),
                             log=lambda m: log("  " + m))
        encoders[objective] = str(out)

    jobs = [(m, o, ov, b, s) for b in budgets for s in spec["seeds"] for m, o, ov in plan]
    todo = []
    for method, objective, overrides, budget, seed in jobs:
        fcfg = FineTuneConfig(**{**fin, **overrides, "labels_per_class": budget, "seed": int(seed),
                                 "results": results_path, "experiment": name, "overwrite": True,
                                 **({"encoder": encoders[objective]} if objective else {})})
        label = fine_tune.method_name(objective, fcfg.freeze, fcfg.unfreeze_top) if objective else method
        if (label, str(budget or "all"), int(seed)) in done:
            continue
        out = runs / "fine-tune" / f"{label}-{budget or 'all'}-{seed}"
        todo.append((label, dataclasses.replace(fcfg, out=str(out))))
    log(f"{len(jobs) - len(todo)} of {len(jobs)} fine-tunes already in {results_path}; {len(todo)} to run")
    for i, (label, fcfg) in enumerate(todo, start=1):
        if cfg.dry_run:
            log(f"  would run {label} labels/class={fcfg.labels_per_class or 'all'} seed={fcfg.seed}")
            continue
        keras.backend.clear_session()
        t = time.perf_counter()
        row = fine_tune.run(fcfg, log=lambda m: None)
        log(f"  ({i}/{len(todo)}) {label:<22} labels/class={str(fcfg.labels_per_class or 'all'):<4} "
            f"seed={fcfg.seed} test accuracy {row['test_accuracy']:.3f} ({time.perf_counter() - t:.1f}s)")
    if cfg.dry_run or not Path(results_path).is_file():
        return None
    return compare.run(CompareConfig(results=results_path), log=log)
