"""The experiment table turned into the answer, as data: summaries with each method's difference
from the baselines (paired over seeds, with intervals), their rendering, the label-efficiency
plot, and the cost and feature-quality lines. Pure functions of a results DataFrame;
`pipelines/compare.py` reads the tables and writes the outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from transfer import methods, outputs, results, rowfilter, stats
from transfer.config import CompareConfig
from transfer.errors import TransferError


def budget_sizes(df: pd.DataFrame) -> pd.Series:
    """Each row's label budget as a number: N per class, or the total of a budget in all;
    every label ("all") as infinity, so it sorts last."""
    size = pd.to_numeric(df["labels_per_class"], errors="coerce").fillna(math.inf)
    if "labels" in df:
        size = size.where(df["labels"].isna(), pd.to_numeric(df["labels"], errors="coerce"))
    return size


def is_total(df: pd.DataFrame) -> pd.Series:
    """Which rows' budgets are totals (N in all, chosen somehow), not N of every class."""
    return df["labels"].notna() if "labels" in df else pd.Series(False, index=df.index)


def selections(df: pd.DataFrame) -> pd.Series:
    """How each row's labels were chosen, from its budget columns ("typiclust on contrastive",
    "random"; "" for N per class)."""
    columns = [df[c] if c in df else pd.Series(None, index=df.index, dtype=object) for c in results.BUDGET[1:]]
    return pd.Series([results.selection_name(*how) if total else ""
                      for total, *how in zip(is_total(df), *columns)], index=df.index, dtype=object)


def budgets(df: pd.DataFrame) -> dict:
    """Each budget of the rows by its name (`labels_per_class`) -> {"size": its number
    (`budget_sizes`), "how": how a total's labels were chosen ("" per class), "features": the
    features that chose them ("" when none did)}; {} for rows without budgets."""
    if "labels_per_class" not in df:
        return {}
    features = df["select_features"] if "select_features" in df else pd.Series(None, index=df.index, dtype=object)
    return {name: {"size": size, "how": how, "features": "" if pd.isna(f) else str(f)}
            for name, size, how, f in zip(df["labels_per_class"], budget_sizes(df), selections(df), features)}


def summarize(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean, std and count of `metric` per group, and each method's difference from the baselines.

    With `method` among `by`, each group gets `vs_scratch` (its mean minus scratch's in the
    otherwise same group) and `vs_best_baseline`: the difference from the best method without
    pretraining (`transfer.methods.is_baseline`), paired over the seeds both share, with a 95%
    interval (`ci_low`, `ci_high`; `transfer.stats`), `paired_seeds` and `comparison`
    ("paired", or "unpaired" when fewer than 2 seeds are shared). `significant` is true when
    the interval excludes zero.
    """
    sizes = {name: b["size"] for name, b in budgets(df).items()} if "labels_per_class" in by else {}
    if "seed" in df and df["seed"].notna().all() and "seed" not in by:  # a seed run twice is one run, averaged
        keep = [metric, *(["seconds"] if "seconds" in df else [])]
        df = df.groupby([*by, "seed"], dropna=False)[keep].mean().reset_index()
    grouped = df.groupby(by, dropna=False)
    table = grouped[metric].agg(mean="mean", std="std", n="count").reset_index()  # n: distinct seeds
    if "seconds" in df:
        table["seconds"] = grouped["seconds"].mean().to_numpy()
    table["std"] = table["std"].fillna(0.0)
    if "method" in by:
        _add_differences(df, table, by, metric)
    sort_cols = [c for c in by if c != "labels_per_class"]
    if "labels_per_class" in by:
        table["_budget"] = table["labels_per_class"].map(sizes)
        sort_cols = [c for c in by if c not in ("labels_per_class", "method")] + ["_budget"]
        sort_cols += ["method"] if "method" in by else []
    table = table.sort_values(sort_cols, kind="stable").drop(columns=["_budget"], errors="ignore")
    return table.reset_index(drop=True)


def _add_differences(df: pd.DataFrame, table: pd.DataFrame, by: list[str], metric: str) -> None:
    context = [c for c in by if c != "method"]
    for col in ("vs_scratch", "vs_best_baseline", "ci_low", "ci_high", "paired_seeds"):
        table[col] = np.nan
    table["comparison"], table["significant"], table["best_baseline"] = "", False, ""
    per_seed = df.groupby([*by, "seed"], dropna=False)[metric].mean() if "seed" in df else None

    def runs(i) -> pd.Series:
        """seed -> value for summary row i (no seeds recorded: its one mean, compared unpaired)."""
        return pd.Series([table.loc[i, "mean"]]) if per_seed is None else per_seed.loc[tuple(table.loc[i, by])]

    groups = table.groupby(context, dropna=False) if context else [((), table)]
    for _, group in groups:
        scratch = group[group["method"].str.split(" [", regex=False).str[0] == "scratch"]
        if not scratch.empty:
            table.loc[group.index, "vs_scratch"] = group["mean"] - scratch["mean"].iloc[0]
        baseline = group["method"].map(methods.is_baseline)
        if not baseline.any():
            continue
        best = group[baseline]["mean"].idxmax()
        table.loc[group.index, "best_baseline"] = table.loc[best, "method"]
        for i in group.index:
            if i == best:
                table.loc[i, ["vs_best_baseline", "paired_seeds"]] = [0.0, table.loc[i, "n"]]
                continue
            d = stats.difference(runs(i), runs(best))
            table.loc[i, ["vs_best_baseline", "ci_low", "ci_high", "paired_seeds"]] = [
                d["diff"], d["low"], d["high"], d["seeds"]]
            table.loc[i, "comparison"] = d["kind"]
            table.loc[i, "significant"] = stats.excludes_zero(d["low"], d["high"]) and not baseline[i]


def split_settings(df: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Runs of one summary group that differ in a recorded setting (`SETTINGS`: the experiment,
    readout, selection encoder, recipe options) are never averaged as one: the group's method
    names gain the settings that tell its runs apart (`contrastive [readout=multi]`), the fewest
    that leave no seed run twice (the experiment's name last: two grids of one recipe over other
    seeds are one method), so each is its own row, compared with the baselines as any
    method is. Returns the rows and one line per group split."""
    if "seed" not in df or "method" not in by or df.empty:
        return df, []
    df, notes = df.copy(), []
    asked = df.copy()  # a readout chosen per run (auto: by cross-validation) is an outcome, not a setting
    if {"readout", "readout_choice"} <= set(df.columns):
        chose = asked["readout_choice"].notna() & (asked["readout_choice"].astype(str) != "given")
        asked["readout"] = asked["readout"].astype(object)  # a column of NaN reads as float
        asked.loc[chose, "readout"] = "auto"
    for key, group in asked.groupby(by, dropna=False, sort=True):
        if group["seed"].notna().sum() == group["seed"].nunique():
            continue
        chosen = []  # the recipe's settings first; the experiment's name only when they do not tell the runs apart
        for column in (c for c in (*SETTINGS[1:], SETTINGS[0]) if c in group and group[c].astype(str).nunique() > 1):
            chosen.append(column)
            if all(g["seed"].notna().sum() == g["seed"].nunique() for _, g in group.groupby(chosen, dropna=False)):
                break
        if not chosen:
            continue
        tags = group[chosen].apply(lambda row: ", ".join(f"{c}={_short(v)}" for c, v in row.items()), axis=1)
        df.loc[group.index, "method"] = group["method"] + " [" + tags + "]"
        label = ", ".join(f"{c} {v}" for c, v in zip(by, key if isinstance(key, tuple) else (key,)))
        notes.append(f"{label}: {len(group)} runs over {group['seed'].nunique()} seeds differ in "
                     f"{', '.join(chosen)}: shown apart ({', '.join(sorted(tags.unique()))}), never averaged")
    return df, notes


def _short(value) -> str:
    """A setting's value as a tag: a path by its last two parts."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).replace("\\", "/")
    return "/".join(text.split("/")[-2:])


def repeated_seeds(df: pd.DataFrame, by: list[str]) -> list[str]:
    """One warning per summary group holding more runs than seeds: the same seed run more than
    once (two experiments' grids, or a setting changed between runs) is averaged as one cell,
    its spread taken over runs of different settings. Names the experiments, or else the
    settings, that tell the runs apart."""
    if "seed" not in df or df.empty:
        return []
    notes = []
    for key, group in df.groupby(by, dropna=False):
        runs, seeds = int(group["seed"].notna().sum()), group["seed"].nunique()  # rows without a seed: not runs
        if runs == seeds:
            continue
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{c} {v}" for c, v in zip(by, key))
        notes.append(f"warning: {label}: {runs} runs over {seeds} seed(s), averaged as one; {_apart(group, by)}")
    return notes


# the columns of a run's settings that tell apart runs of one summary group (the experiment first)
SETTINGS = ("experiment", "encoder", "select_encoder", "select_readout", "readout", "freeze", "unfreeze_top", "head",
            "epochs", "steps", "learning_rate", "semi_learning_rate", "batch_size", "image_size", "augment", "mu",
            "threshold", "unlabeled_weight", "align", "teacher", "strong_view", "adapt_bn", "unlabeled", "test_data")


def _apart(group: pd.DataFrame, by: list[str]) -> str:
    """What tells a group's runs apart, and how to keep them apart."""
    differ = [c for c in SETTINGS if c in group and group[c].astype(str).nunique() > 1]
    if not differ:
        return "the same settings ran again: --where (on run_id or timestamp) picks one"
    values = ", ".join(sorted(group[differ[0]].astype(str).unique()))
    return (f"they differ in {', '.join(differ)} ({differ[0]}: {values}): "
            f"--by {','.join([*by, differ[0]])} keeps them apart, or --where picks one")


def uses_pretraining(method: str, select_encoder) -> bool:
    """Does a pipeline use a pretrained encoder: to start from, or to choose its labels with?"""
    return not methods.is_baseline(method) or methods.chosen_by_encoder(None if pd.isna(select_encoder) else
                                                                         select_encoder)


def best_pipelines(df: pd.DataFrame, context: list[str], metric: str) -> pd.DataFrame:
    """At each total label budget (rows with `labels`), across selections: the best pipeline
    (selection, then method) that uses a pretrained encoder against the best that does not,
    paired over the seeds both share, with a 95% interval. Each side's best is ranked among its
    pipelines run on that side's most seeds (`unranked` counts those left out for fewer: a
    partly run grid cell's mean is not comparable). `context`: the other grouping columns
    (e.g. data). Empty when the rows have no total budgets or one side is missing."""
    out = []
    for entry, group in _total_budgets(df, context):
        pipes = _pipelines(group, metric)
        if pipes["_pretrained"].all() or not pipes["_pretrained"].any():
            continue
        best, unranked, ranked = {}, 0, {}
        for side in (True, False):
            side_pipes = pipes[pipes["_pretrained"] == side]
            best[side], left_out = _best_of(side_pipes, metric)
            unranked, ranked[side] = unranked + left_out, len(side_pipes) - left_out
        d = stats.difference(_per_seed(group, best[True], metric), _per_seed(group, best[False], metric))
        for side, name in ((True, "with"), (False, "without")):
            entry.update({f"{name}_selection": best[side]["_how"], f"{name}_method": best[side]["method"],
                          f"{name}_mean": best[side][metric]})
        out.append({**entry, **_difference_fields(d), "unranked": unranked, "candidates": ranked[True]})
    return pd.DataFrame(out)


def choice_gains(df: pd.DataFrame, context: list[str], metric: str) -> pd.DataFrame:
    """At each total label budget, for each learner (method) that has a blind draw (selection
    `random`) and at least one chosen selection (not `random`, not the `stratified` oracle): its
    best choice against its blind draw, paired over the seeds both share, with a 95% interval;
    the best ranked among the learner's choices run on the most seeds. Which images to label,
    weighed learner by learner. Empty when no learner has both."""
    out = []
    for entry, group in _total_budgets(df, context):
        for method, runs in group.groupby("method", sort=True):
            pipes = _pipelines(runs, metric)
            blind, chosen = pipes[pipes["_how"] == "random"], pipes[~pipes["_how"].isin(["random", "stratified"])]
            if blind.empty or chosen.empty:
                continue
            best, unranked = _best_of(chosen, metric)
            d = stats.difference(_per_seed(runs, best, metric), _per_seed(runs, blind.iloc[0], metric))
            out.append({**entry, "method": method, "choice": best["_how"], "choice_mean": best[metric],
                        "blind_mean": blind.iloc[0][metric], **_difference_fields(d), "unranked": unranked,
                        "candidates": len(chosen) - unranked})
    return pd.DataFrame(out)


def _total_budgets(df: pd.DataFrame, context: list[str]):
    """(the group's key fields, its rows) per total label budget (rows with `labels`) and
    context; each row marked `_pretrained` (a pretrained start or an encoder's choice) and with
    how its labels were chosen (`_how`)."""
    if not {"labels", "labels_per_class", "method"} <= set(df.columns) or df["labels"].isna().all():
        return
    rows = df[df["labels"].notna()].copy()
    encoder = rows["select_encoder"] if "select_encoder" in rows else pd.Series("", index=rows.index)
    rows["_pretrained"] = [uses_pretraining(m, e) for m, e in zip(rows["method"], encoder)]
    rows["_how"] = selections(rows)
    keys = [c for c in context if c not in ("labels_per_class", "method", "labels")] + ["labels"]
    for key, group in rows.groupby(keys, dropna=False, sort=True):
        yield dict(zip(keys, key if isinstance(key, tuple) else (key,))), group


def _pipelines(group: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (selection budget, method) of a total budget's rows: mean and seeds run."""
    seeds = ("seed", "nunique") if "seed" in group else (metric, "size")
    return group.groupby(["labels_per_class", "_how", "method", "_pretrained"], dropna=False).agg(
        **{metric: (metric, "mean"), "_seeds": seeds}).reset_index()


def _best_of(pipes: pd.DataFrame, metric: str) -> tuple[pd.Series, int]:
    """(the best pipeline, how many were not ranked): ranked among those run on the most seeds,
    since a mean over fewer seeds is not comparable (one lucky seed would win)."""
    full = pipes[pipes["_seeds"] == pipes["_seeds"].max()]
    return full.sort_values(metric, kind="stable").iloc[-1], len(pipes) - len(full)


def _per_seed(group: pd.DataFrame, pipe: pd.Series, metric: str) -> pd.Series:
    """seed -> value of one pipeline (selection budget and method) of a group's rows."""
    runs = group[(group["labels_per_class"] == pipe["labels_per_class"]) & (group["method"] == pipe["method"])]
    return runs.groupby("seed")[metric].mean() if "seed" in runs else runs[metric].reset_index(drop=True)


def _difference_fields(d: dict) -> dict:
    return {"diff": d["diff"], "low": d["low"], "high": d["high"], "seeds": d["seeds"], "comparison": d["kind"],
            "significant": stats.excludes_zero(d["low"], d["high"])}


def select(table: pd.DataFrame, cfg: CompareConfig) -> pd.DataFrame:
    """--sort/--descending, then --top, then --columns."""
    if cfg.sort:
        known(table, [cfg.sort], "--sort")
        table = table.sort_values(cfg.sort, ascending=not cfg.descending, kind="stable")
    if cfg.top:
        table = table.head(cfg.top)
    if cfg.columns:
        known(table, list(cfg.columns), "--columns")
        table = table[list(cfg.columns)]
    return table.reset_index(drop=True)


def known(table: pd.DataFrame, names: list[str], option: str) -> None:
    unknown = [c for c in names if c not in table.columns]
    if unknown:
        raise TransferError(f"{option}: unknown column(s) {unknown}. Available: {', '.join(table.columns)}")


def format_table(table: pd.DataFrame, metric: str, fmt: str) -> str:
    """Render a summary as text, markdown, csv or json (csv and json keep raw numbers)."""
    if fmt == "csv":
        return neutralized(table).to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=1)
    shown = rendered(table, metric)
    if fmt == "markdown":
        header = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
        return "\n".join([header, rule, *rows])
    return shown.to_string(index=False)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (OWASP CSV injection)


def neutralized(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every text cell that a spreadsheet would run as a formula prefixed
    with `'` (OWASP's advice for CSV exports); numbers are left as they are."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v)
    return out


def rendered(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The summary as people read it: numbers in points, intervals beside the differences."""
    order = list(table.columns)
    if "n" in order and "mean" in order:  # seeds before the metric
        order.remove("n")
        order.insert(order.index("mean"), "n")
    return pd.DataFrame({name: values for column in order
                         for name, values in [_render(table, column, metric)] if name})


# columns shown inside another one's cells when that one is there
INSIDE = {"std": "mean", "ci_low": "vs_best_baseline", "ci_high": "vs_best_baseline",
          "significant": "vs_best_baseline", "best_baseline": "vs_best_baseline", "comparison": "paired_seeds"}


def _render(table: pd.DataFrame, column: str, metric: str) -> tuple[str | None, list[str]]:
    """(heading, cells) of one summary column; (None, []) for a column shown inside another."""
    scale, digits = (100.0, 1) if "accuracy" in metric else (1.0, 4)

    def num(v, signed=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v * scale:+.{digits}f}" if signed else f"{v * scale:.{digits}f}"

    has = set(table.columns)
    values = table[column]
    if column == "mean":
        heading = metric + (" %" if scale == 100 else "")
        if "std" in has:
            return heading, [f"{num(m)} ± {num(s)}" for m, s in zip(values, table["std"])]
        return heading, [num(v) for v in values]
    if INSIDE.get(column) in has:
        return None, []
    if column == "n":
        return "seeds", [str(int(v)) for v in values]
    if column in ("vs_scratch", "std", "ci_low", "ci_high"):
        return column.replace("_", " "), [num(v, column != "std") for v in values]
    if column == "vs_best_baseline":
        low = table["ci_low"] if "ci_low" in has else [math.nan] * len(table)
        high = table["ci_high"] if "ci_high" in has else [math.nan] * len(table)
        sig = table["significant"] if "significant" in has else [False] * len(table)
        return "vs best baseline [95% CI]", [_difference(num, v, lo, hi, s) for v, lo, hi, s in zip(values, low, high, sig)]
    if column == "paired_seeds":
        kinds = table["comparison"] if "comparison" in has else [""] * len(table)
        return "paired", [("" if n != n else str(int(n))) + (" (unpaired)" if k == "unpaired" else "")
                          for n, k in zip(values, kinds)]
    if column == "seconds":
        return "s/run", [f"{v:.1f}" if v == v else "" for v in values]
    return column, [str(v) for v in values]


def _difference(num, v, low, high, significant) -> str:
    """A difference with its interval; "(the same on every seed)" when every paired difference was zero."""
    if low == low and low == high == v == 0:
        return f"{num(v, True)} (the same on every seed)"
    return num(v, True) + (f" [{num(low, True)}, {num(high, True)}]" if low == low else "") + (" *" if significant else "")


def curves(df: pd.DataFrame, metric: str) -> list[dict]:
    """The label-efficiency panels, as data: per data set, one panel for budgets per class
    ("labeled images per class", one line per method) and one for total budgets ("labeled
    images in all", one line per method and selection: a choice and a blind draw are never
    averaged into one point). Each panel: title, xlabel, ticks [(x, label)], and lines
    {label: (is a baseline, DataFrame of x -> mean, std)}; "all" is drawn at twice the largest budget."""
    datasets = sorted(df["data"].dropna().unique()) if "data" in df else [None]
    total, size, how = is_total(df), budget_sizes(df), selections(df)
    panels = []
    for name in datasets:
        for kind, rows in (("per class", ~total), ("in all", total)):
            part = df[rows & (True if name is None else df["data"] == name)]
            if part.empty:
                continue
            sizes = sorted(set(size[part.index]))
            finite = [b for b in sizes if b != math.inf]
            at_all = max(finite) * 2 if finite else 1.0
            line = part["method"] + (" on " + how[part.index] if kind == "in all" else "")
            lines = {}
            for label, runs in sorted(part.assign(_line=line).groupby("_line"), key=lambda kv: kv[0]):
                x = size[runs.index].clip(upper=at_all)
                lines[label] = (methods.is_baseline(runs["method"].iloc[0]),
                                runs.assign(x=x).groupby("x")[metric].agg(["mean", "std"]).fillna(0.0).sort_index())
            panels.append({"title": " ".join(str(p) for p in (name, kind) if p is not None),
                           "xlabel": f"labeled images {kind}", "lines": lines,
                           "ticks": [(t, f"{t:g}") for t in finite] + ([(at_all, "all")] if math.inf in sizes else [])})
    return panels


def plot(df: pd.DataFrame, metric: str, path: str) -> None:
    """Label efficiency (`curves`): `metric` against the label budget on a log axis whose only
    ticks are the budgets run, the spread over seeds (mean ± std) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    panels = curves(df, metric)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4.5), squeeze=False)
    scale = 100.0 if "accuracy" in metric else 1.0
    for ax, panel in zip(axes[0], panels):
        for label, (baseline, curve) in panel["lines"].items():
            drawn, = ax.plot(curve.index, curve["mean"] * scale, marker="o", label=label,
                             linestyle="--" if baseline else "-")
            ax.fill_between(curve.index, (curve["mean"] - curve["std"]) * scale,
                            (curve["mean"] + curve["std"]) * scale, color=drawn.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # no "3x10^0" minor labels: the budgets run are the ticks
        ax.set_xticks([t for t, _ in panel["ticks"]], [name for _, name in panel["ticks"]])
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(metric + (" (%)" if "accuracy" in metric else ""))
        ax.set_title(panel["title"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    outputs.replace(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def pretrainings(everything: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The finished pretrain rows of `everything` whose encoder a fine-tune of `df` learned from
    or chose its labels with (the rows --where kept): their cost is part of what is compared.
    A directory pretrained again (a grid re-run into the same runs directory) counts the
    pretraining each fine-tune found there: the last one before it, by timestamp."""
    if not {"command", "run_dir"} <= set(everything.columns):
        return everything.iloc[:0]
    pre = everything[(everything["command"] == "pretrain") & (everything["status"].fillna("ok") == "ok")]
    used = [pd.DataFrame({"_dir": df[c], "_when": _when(df)}) for c in ("encoder", "select_encoder") if c in df]
    uses = pd.concat(used, ignore_index=True).dropna(subset=["_dir"]).astype({"_dir": str}) if used else None
    if uses is None or uses.empty or pre.empty:
        return pre.iloc[:0]
    pre = pre.assign(_dir=pre["run_dir"].astype(str), _when=_when(pre), _row=pre.index)
    if pre["_when"].isna().any() or uses["_when"].isna().all():  # no times to tell pretrainings apart
        return pre[pre["_dir"].isin(set(uses["_dir"]))].drop(columns=["_dir", "_when", "_row"])
    found = pd.merge_asof(uses.dropna(subset=["_when"]).sort_values("_when"),
                          pre[["_dir", "_when", "_row"]].sort_values("_when"), on="_when", by="_dir")
    return pre[pre["_row"].isin(found["_row"].dropna())].drop(columns=["_dir", "_when", "_row"])


def _when(df: pd.DataFrame) -> pd.Series:
    """The rows' timestamps as times (NaT where a row has none)."""
    return pd.to_datetime(df["timestamp"] if "timestamp" in df else pd.Series(None, index=df.index, dtype=object),
                          utc=True, errors="coerce").astype("datetime64[ns, UTC]")  # one unit: merge_asof compares them


def pretraining_cost(done: pd.DataFrame) -> list[str]:
    """One line per pretraining (rows of `pretrainings`): the one-off cost every fine-tune of its
    encoder reuses."""
    return [f"pretraining {r.objective} on {r.data}: {r.seconds:.0f}s"
            + (f" ({r.images_per_second:.0f} images/s)" if r.images_per_second > 0 else "")  # k-means trains none
            + ", reused by every fine-tune of its encoder" for r in done.itertuples()]


def feature_quality(df: pd.DataFrame) -> list[str]:
    """One line per evaluated encoder and data set (`transfer evaluate` rows): its best
    readout's k-NN accuracy and error as a ratio of the raw pixels', and 1-NN from 4 labels
    per class beside the pixels'."""
    needed = {"command", "method", "knn_accuracy", "knn_error_vs_pixels", "encoder", "data"}
    if not needed <= set(df.columns):
        return []
    status = df["status"].fillna("ok") if "status" in df else pd.Series("ok", index=df.index)
    rows = df[(df["command"] == "evaluate") & (status == "ok")]
    lines = []
    for (data, encoder), group in rows.groupby(["data", "encoder"], sort=True):
        pixels = group[group["method"] == "pixels"]
        mine = group[~group["method"].isin(["pixels", "random", "kmeans-filters"])]  # evaluate's baselines
        if mine.empty or pixels.empty:
            continue
        best, ref = mine.loc[mine["knn_accuracy"].idxmax()], pixels.iloc[-1]
        few = (f", 1-NN from 4 labels/class {100 * best['nn1_4']:.1f}% ({100 * (best['nn1_4'] - ref['nn1_4']):+.1f} "
               "vs pixels)" if "nn1_4" in group and best["nn1_4"] == best["nn1_4"] else "")
        lines.append(f"features of {encoder} ({best['method']}, readout {best['readout']}) on {data}: "
                     f"20-NN {100 * best['knn_accuracy']:.1f}%, k-NN error vs pixels: {best['knn_error_vs_pixels']:.2f}x"
                     + few)
    return lines


NOTE = ("* the 95% confidence interval of the difference from the best baseline (the best method without "
        "pretraining; paired t over the seeds both share, Welch when unpaired) excludes zero")


def costs(df: pd.DataFrame, pre: pd.DataFrame) -> pd.DataFrame:
    """What each method cost per run (fine-tune) and what each pretraining (`pretrainings`) cost once."""
    wanted = {"seconds": "s/run", "cpu_seconds": "CPU s/run", "images_per_second": "images/s",
              "peak_memory_mb": "peak MiB"}
    have = {k: v for k, v in wanted.items() if k in df and df[k].notna().any()}  # CPU time: rows since it was kept
    keys = [c for c in ("data", "method") if c in df]
    fine = df.groupby(keys, dropna=False)[list(have)].mean().round(1).reset_index().rename(columns=have)
    fine.insert(0, "what", "fine-tune")
    if pre.empty or "objective" not in pre:
        return fine
    pre = pre.assign(method="pretrain " + pre["objective"].astype(str))[[*keys, *have]].rename(columns=have)
    return pd.concat([fine, pre.assign(what="pretrain (once per encoder)").round(1)], ignore_index=True)


def finished_fine_tunes(df: pd.DataFrame, where: str | None, source: str) -> pd.DataFrame:
    """The rows compare looks at: finished fine-tunes, then `--where`."""
    if "command" in df:
        df = df[df["command"] == "fine-tune"]
    if "status" in df:
        df = df[df["status"].fillna("ok") == "ok"]
    if "method" in df:
        df = df[df["method"].notna()]  # a row that names no method cannot be compared
    if where:
        df = rowfilter.apply(df, where)  # compares, never calls (not DataFrame.query)
    if df.empty:
        raise TransferError(f"{source} has no finished fine-tune runs to compare"
                            + (f" matching --where {where!r}" if where else ""))
    return df
