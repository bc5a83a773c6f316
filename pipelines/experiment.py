"""Run an experiment file: methods x label budgets x seeds, every run a row in one table.

    name = "digits"
    results = "digits.csv"                 # default <name>.csv beside this file
    runs = "../runs/digits"                # default runs/<name> beside this file
    tensorboard = "tb/digits"              # optional: TensorBoard logs of every run, DIR/<run id>
    seeds = [0, 1, 2, 3, 4]
    labels_per_class = [5, 10, 25, 100]    # stratified draws of N per class (the oracle), and/or
    budgets = [10, 20]                     # total label budgets, each chosen by every one of
    selections = ["random", "typiclust-pixels", "typiclust-contrastive"]
    methods = ["contrastive", "autoencoder", "random-frozen", "scratch", "pixels-logreg"]

    [pretrain]      # PretrainConfig options for every pretraining
    data = "digits"
    [fine_tune]     # FineTuneConfig options for every fine-tune
    data = "digits"
    [fine_tune.fixmatch]   # a section's options may sit in its own table (or in [fine_tune])
    steps = 1000

A selection (for `budgets`) is `random` (a blind draw), `stratified` (N / classes of each),
or `typiclust` / `probcover` / `kcenter`: on each method's own encoder (pixels for the baselines), or with a
suffix on one features for every method: `-pixels`, or `-<objective>` (the experiment's
encoder pretrained with that objective). A method is a baseline (`pixels-logreg`, `random-frozen`, `random-top<K>`,
`scratch`), an objective name (pretrain with it, fine-tune with the defaults:
the default recipe), or `<objective>-frozen|-top<K>|-finetuned`; with `-semi`
(e.g. `scratch-semi`) it also learns from `unlabeled = SRC` of [fine_tune]
(FixMatch), which the other methods ignore. Each objective
is pretrained once (runs/pretrain-<objective>) and reused by all its fine-tunes
(runs/fine-tune/<name>/...); experiments naming the same `runs` share its
encoders and keep their fine-tunes apart. Paths in the file (results, runs,
tensorboard, and the sections' data, unlabeled, test_data, probe_data and encoders) are
relative to the file's own folder, wherever the command runs (a built-in name or an
absolute path as it is). `--dry-run` plans and writes nothing. Re-running skips the runs whose rows are already in the
table, and reuses finished pretrainings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from pathlib import Path

import keras

from pipelines import compare, fine_tune, pretrain
from pipelines.common import config_dict
from transfer import artifacts, backbones, builtins, methods, outputs, results, selection, stopping
from transfer.config import (CompareConfig, ExperimentConfig, FineTuneConfig, PretrainConfig, check_section,
                             check_type, in_sections, make, read_toml, settable)
from transfer.errors import TransferError
from transfer.progress import Progress
from transfer.vocabulary import KMEANS, MADE_BY

KEYS = {"name", "description", "results", "runs", "tensorboard", "seeds", "labels_per_class", "budgets", "selections",
        "methods", "pretrain", "fine_tune"}


# The top-level keys' types (the sections' come from their config classes).
TYPES = {"name": str, "description": str, "results": str, "runs": str, "tensorboard": str, "seeds": list[int],
         "labels_per_class": list[int | str], "budgets": list[int], "selections": list[str], "methods": list[str],
         "pretrain": dict, "fine_tune": dict}


# The sections' options that name files or folders: relative to the experiment file's folder.
PATHS = ("data", "unlabeled", "test_data", "probe_data", "tensorboard", "results", "encoder", "select_encoder")


def _beside(value, base: Path):
    """A path of the experiment file, relative to its folder; a built-in name, an encoder's
    name (random, pixels) or an absolute path as it is."""
    if not isinstance(value, str) or not value or value in ("random", "pixels") or builtins.is_builtin(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def _section(spec: dict, key: str, cls, path) -> dict:
    """The [key] section's options (the top-level `tensorboard` for every run, unless it names its own)."""
    section = {**({"tensorboard": spec["tensorboard"]} if "tensorboard" in spec else {}),
               **in_sections(spec.get(key, {}), cls)}
    allowed = set(settable(cls))
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise TransferError(f"{path}: unknown [{key}] option(s) {unknown}")
    check_section(section, cls, f"{path} [{key}]")
    base = Path(path).parent
    return {k: tuple(v) if isinstance(v, list) else _beside(v, base) if k in PATHS else v for k, v in section.items()}


def load(path: str) -> dict:
    """The experiment file, every key checked for its type and value before anything runs."""
    spec = read_toml(path, "experiment file")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise TransferError(f"{path}: unknown key(s) {unknown}. Known: {sorted(KEYS)}")
    for key in ("name", "seeds", "methods"):
        if key not in spec or (isinstance(spec[key], (list, str)) and not spec[key]):
            raise TransferError(f"{path}: '{key}' is required")
    if not spec.get("labels_per_class") and not spec.get("budgets"):
        raise TransferError(f"{path}: 'labels_per_class' or 'budgets' is required")
    if spec.get("selections") and not spec.get("budgets"):
        raise TransferError(f"{path}: 'selections' choose the images of 'budgets' (total labels); give budgets too")
    for key, value in spec.items():
        check_type(value, TYPES[key], key, path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec["name"]) or spec["name"].startswith("."):
        raise TransferError(f"{path}: name may use letters, digits, '_', '-' and '.'. Received: {spec['name']!r}")
    if any(s < 0 for s in spec["seeds"]):
        raise TransferError(f"{path}: seeds must be >= 0. Received: seeds={spec['seeds']!r}")
    if any(b < 1 for b in spec.get("budgets", [])):
        raise TransferError(f"{path}: budgets must be >= 1. Received: budgets={spec['budgets']!r}")
    for how in spec.get("selections", ["random"]):
        _selection(how, path)
    for b in spec.get("labels_per_class", []):
        if (isinstance(b, str) and b != "all") or (isinstance(b, int) and b < 1):
            raise TransferError(f"{path}: labels_per_class holds whole numbers >= 1 or 'all'. "
                                f"Received: labels_per_class={spec['labels_per_class']!r}")
    for m in spec["methods"]:
        methods.parse(m)  # an unknown method is refused now, not after the pretrainings
    return spec


def _check_values(path, spec: dict, pre: dict, fin: dict) -> None:
    """The sections' values checked as the CLI checks its options (ranges, choices), before
    anything runs: a bad [fine_tune] value is not found after hours of pretraining. A setting
    of one selection rule (probcover's purity) is checked with that rule, and given only to it."""
    if "purity" in fin:
        rules = {_selection(h, path)[0] for h in spec.get("selections", [])} if spec.get("budgets") else set()
        if "probcover" not in rules:
            raise TransferError(f"{path} [fine_tune]: purity is probcover's (the share of pure balls that sets its "
                                "radius); name a probcover selection in 'selections' (with 'budgets'), or remove it")
        fin = {**fin, "labels": 1, "selection": "probcover"}
    if "weights" in fin:  # the keras-... methods' (checked with one of them), given only to them
        backbone = next((m for m in spec["methods"] if backbones.is_backbone(methods.parse(m).settings.get("encoder"))),
                        None)
        if backbone is None:
            raise TransferError(f"{path} [fine_tune]: weights is the ImageNet backbones' (keras-<name>-... methods); "
                                "name one in 'methods', or remove it")
        fin = {**fin, **methods.parse(backbone).settings}
    checks = [("pretrain", PretrainConfig, {**pre, "out": "check"}), ("fine_tune", FineTuneConfig, fin)]
    if KMEANS in _objectives(spec):  # its encoder is pretrained from the same section
        checks.append(("pretrain", PretrainConfig, _pretrain_fields(KMEANS, pre, "check")))
    for key, cls, fields in checks:
        try:
            make(cls, **fields)
        except TransferError as exc:
            raise TransferError(f"{path} [{key}]: {exc}") from None


def _selection(how: str, path) -> tuple[str, str | None]:
    """(selection, None: each method's own features | "pixels" | an objective) of a `selections` entry."""
    base, _, on = how.partition("-")
    if base in ("random", "stratified") and not on:
        return base, None
    if base in selection.BY_FEATURES and (not on or on == "pixels" or on in MADE_BY):
        return base, on or None
    raise TransferError(f"{path}: unknown selection {how!r}: random, stratified, {', '.join(selection.BY_FEATURES)} "
                        f"(optionally -pixels, -{KMEANS} or -<objective>, e.g. typiclust-contrastive)")


def _done(results_path: str, name: str) -> set[tuple[str, str, int]]:
    if not Path(results_path).is_file():
        return set()
    df = results.read_results(results_path)
    if "experiment" not in df:
        return set()
    df = df[(df["experiment"] == name) & (df["command"] == "fine-tune") & (df["status"].fillna("ok") == "ok")]
    return {(m, str(b), int(s)) for m, b, s in zip(df["method"], df["labels_per_class"], df["seed"])}


def run(cfg: ExperimentConfig, log=print):
    spec = load(cfg.file)
    name, base = spec["name"], Path(cfg.file).parent
    results_path = _beside(spec.get("results", f"{name}.csv"), base)
    runs = Path(_beside(spec.get("runs", f"runs/{name}"), base))
    pre = _section(spec, "pretrain", PretrainConfig, cfg.file)
    fin = _section(spec, "fine_tune", FineTuneConfig, cfg.file)
    plan = [(m, methods.parse(m)) for m in spec["methods"]]
    _check_values(cfg.file, spec, pre, fin)
    outputs.check(results.target(results_path), "results", create=not cfg.dry_run)
    results.check_table(results_path, f"{cfg.file}: results")
    encoders = _encoders(spec, runs)
    jobs, todo = _fine_tunes(spec, plan, fin, encoders, runs, results_path)
    used = {path for _, _, fcfg in todo for path in (fcfg.encoder, fcfg.budget.select_encoder)}
    for objective, out in encoders.items():  # pretrained only when a fine-tune left to run needs it
        _pretrained(objective, Path(out), out in used, pre, results_path, name, cfg.dry_run, log)
    log(f"{jobs - len(todo)} of {jobs} fine-tunes already in {results_path}; {len(todo)} to run")
    progress = Progress(log, len(todo), "  run", every=1, bar=False)
    for i, (label, budget, fcfg) in enumerate(todo, start=1):
        what = f"{label:<22} labels={budget:<4} seed={fcfg.seed}"
        if cfg.dry_run:
            log(f"  would run {what}")
            continue
        stopping.check()  # between runs
        t = time.perf_counter()
        row = _fine_tune(fcfg, (label, budget, fcfg.seed), results_path, name)
        progress.update(i, note=f" {what} " + (f"test accuracy {row['test_accuracy']:.3f} in "
                                               f"{time.perf_counter() - t:.1f}s" if row else f"skipped: {getattr(row, 'note', '')}"))
    if cfg.dry_run or not Path(results_path).is_file():
        return None
    # this experiment's rows only: one table may hold others' (or this grid's earlier rows kept under another name)
    return compare.run(CompareConfig(results=results_path, where=f"experiment == {name!r}"), log=log)


def _objectives(spec: dict) -> list[str]:
    """The objectives (or kmeans) of every encoder the grid's methods fine-tune or its selections
    choose with, each once."""
    plan = [methods.parse(m) for m in spec["methods"]]
    by_selection = [_selection(h, "")[1] for h in spec.get("selections", [])] if spec.get("budgets") else []
    return list(dict.fromkeys([*(m.objective for m in plan if m.objective),
                               *(o for o in by_selection if o not in (None, "pixels"))]))


def _encoders(spec: dict, runs: Path) -> dict[str, str]:
    """{objective (or kmeans): its encoder's run directory} (`_objectives`)."""
    return {objective: str(runs / f"pretrain-{objective}") for objective in _objectives(spec)}


def _pretrain_fields(objective: str, pre: dict, out: str) -> dict:
    """The PretrainConfig fields of `objective`'s encoder: the [pretrain] section with that
    objective, or for kmeans its start alone (no objective trained, --epochs 0)."""
    made = {"start": KMEANS, "epochs": 0} if objective == KMEANS else {"objective": objective}
    return {**pre, **made, "out": out}


# The entries of config.json that make no difference to the encoder a pretraining leaves (where it
# writes, how it is watched, how the work is spread, which code ran it); every option else does.
_NOT_THE_ENCODER = {"out", "results", "experiment", "strategy", "tensorboard", "plots", "probe_data", "code",
                    "command"}


def _differences(out: Path, manifest: dict, cfg: PretrainConfig) -> list[str]:
    """The settings (`name=value` as the reused encoder had them) in which the encoder at `out`
    differs from what `cfg` would pretrain; a setting its config.json does not hold is not
    compared, but for its start (a manifest without one started from random weights)."""
    try:
        saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    wanted = json.loads(json.dumps(config_dict(cfg), default=outputs.json_default))  # as config.json holds it
    differ = [f"{k}={saved[k]}" for k in wanted if k not in _NOT_THE_ENCODER and k in saved and k != "start"
              and saved[k] != wanted[k]]
    started = manifest.get("start", "random")
    return differ + ([f"start={started}"] if started != cfg.starts_from() else [])


class Skipped(dict):
    """No row: another process ran (or is running) this fine-tune."""

    def __init__(self, note: str):
        super().__init__()
        self.note = note


def _fine_tune(fcfg: FineTuneConfig, key: tuple, results_path: str, name: str) -> dict:
    """One fine-tune of the grid, unless another process holds its run directory or has
    already appended its row (two experiments on one file share the grid)."""
    try:
        with artifacts.run_lock(fcfg.out):
            if key in _done(results_path, name):
                return Skipped("another process ran it")
            keras.backend.clear_session()
            return fine_tune.run(fcfg, log=lambda m: None)
    except artifacts.RunBusy:
        return Skipped("another process is running it")


def _pretrained(objective: str, out: Path, needed: bool, pre: dict, results_path: str, name: str, dry_run: bool,
                log) -> None:
    """The experiment's encoder for `objective` at `out`: reused when it exists, else pretrained
    when `needed` (a fine-tune left to run learns from it or chooses its labels with it)."""
    if not needed and not (out / artifacts.MANIFEST).is_file():
        log(f"not pretraining {objective}: every fine-tune that needs it is in {results_path}")
        return
    with contextlib.ExitStack() as held:
        if not dry_run:  # another experiment pretraining the same encoder: wait for it, then reuse
            held.enter_context(artifacts.run_lock(out, wait=True, on_wait=lambda m: log("  " + m)))
        fields = _pretrain_fields(objective, pre, str(out))
        try:
            manifest = artifacts.read_manifest(out, "encoder")
        except TransferError:
            log(f"pretraining {objective} -> {out}")
            if not dry_run:
                keras.backend.clear_session()
                pretrain.run(PretrainConfig(**{**fields, "results": results_path, "experiment": name}),
                             log=lambda m: log("  " + m))
            return
        log(f"reusing the {objective} encoder in {out}")
        differ = _differences(out, manifest, make(PretrainConfig, **fields))
        if differ:
            log(f"  warning: it was pretrained with {', '.join(differ)}, not as this file's [pretrain] says: the rows "
                f"learned from it are that encoder's (remove {out}, or name another runs directory, to pretrain it "
                "again)")


def _fine_tunes(spec, plan, fin: dict, encoders: dict, runs: Path, results_path: str):
    """(number of jobs in the grid, [(method name, budget name, FineTuneConfig)] of those not yet in the table)."""
    done = _done(results_path, spec["name"])
    budgets = [{"labels_per_class": None if str(b) == "all" else int(b)} for b in spec.get("labels_per_class", [])]
    for how in spec.get("selections", ["random"]) if spec.get("budgets") else []:
        base, on = _selection(how, "")
        on = encoders.get(on, on)  # an objective's encoder directory
        budgets += [{"labels": int(n), "selection": base, "select_encoder": on} for n in spec["budgets"]]
    jobs = [(m, b, s) for b in budgets for s in spec["seeds"] for m in plan]
    pending = {path: objective for objective, path in encoders.items()}  # names a choice before its encoder exists
    todo = []
    for (given, method), budget, seed in jobs:
        if method.semi and not fin.get("unlabeled"):
            raise TransferError(f"method {given} learns from unlabeled images: give them as unlabeled = SRC in "
                                "the experiment's [fine_tune] section")
        own = fin if budget.get("selection") == "probcover" else {k: v for k, v in fin.items() if k != "purity"}
        if not backbones.is_backbone(method.settings.get("encoder")):  # weights = "imagenet" is the backbones'
            own = {k: v for k, v in own.items() if k != "weights"}
        fcfg = make(FineTuneConfig, **{
            **own, **budget, "seed": int(seed), "results": results_path, "experiment": spec["name"], "overwrite": True,
            **method.fields(encoders[method.objective] if method.objective else None, fin.get("unlabeled"))})
        objective = method.objective or (backbones.objective(fcfg.weights) if backbones.is_backbone(fcfg.encoder)
                                         else None)  # a backbone's row is named by its weights, as fine-tune names it
        label = methods.name(objective, fcfg.encoder, fcfg.freeze, fcfg.unfreeze_top, method.semi)
        name = fine_tune.budget_name(fcfg, pending)
        if (label, str(name), int(seed)) not in done:
            # Under the experiment's name: experiments sharing a runs directory share its encoders only.
            tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-")
            out = runs / "fine-tune" / spec["name"] / f"{label}-{tag}-{seed}"
            todo.append((label, str(name), dataclasses.replace(fcfg, out=str(out))))
    return len(jobs), todo
