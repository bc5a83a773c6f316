"""Turn the experiment table into the answer: did pretraining help, by how much, at which label budget?"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from transfer import artifacts, methods, results
from transfer.config import CompareConfig
from transfer.errors import TransferError


def _budget_key(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf  # "all" sorts last


def summarize(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean, std and count of `metric` per group, plus differences from the baselines.

    With `method` among `by`, each group gets `vs_scratch` (its mean minus the
    scratch mean in the otherwise same group) and `vs_best_baseline` (minus
    the best baseline mean), and `significant` is true when that difference
    exceeds the combined spread sqrt(std_a^2 + std_b^2) of the two groups.
    """
    grouped = df.groupby(by, dropna=False)
    table = grouped[metric].agg(mean="mean", std="std", n="count").reset_index()
    if "seconds" in df:
        table["seconds"] = grouped["seconds"].mean().to_numpy()
    table["std"] = table["std"].fillna(0.0)
    if "method" in by:
        context = [c for c in by if c != "method"]
        table["vs_scratch"] = np.nan
        table["vs_best_baseline"] = np.nan
        table["significant"] = False
        groups = table.groupby(context, dropna=False) if context else [((), table)]
        for _, group in groups:
            baseline = group["method"].map(methods.is_baseline)
            base = group[baseline]
            scratch = group[group["method"] == "scratch"]
            if not scratch.empty:
                table.loc[group.index, "vs_scratch"] = group["mean"] - scratch["mean"].iloc[0]
            if not base.empty:
                best = base.loc[base["mean"].idxmax()]
                diff = group["mean"] - best["mean"]
                spread = np.sqrt(group["std"] ** 2 + best["std"] ** 2)
                table.loc[group.index, "vs_best_baseline"] = diff
                enough = (group["n"] >= 2) & (best["n"] >= 2)  # one run has no spread to exceed
                table.loc[group.index, "significant"] = (diff.abs() > spread) & enough & ~baseline
    sort_cols = [c for c in by if c != "labels_per_class"]
    if "labels_per_class" in by:
        table["_budget"] = table["labels_per_class"].map(_budget_key)
        sort_cols = [c for c in by if c not in ("labels_per_class", "method")] + ["_budget"]
        sort_cols += ["method"] if "method" in by else []
    table = table.sort_values(sort_cols, kind="stable").drop(columns=["_budget"], errors="ignore")
    return table.reset_index(drop=True)


def format_table(table: pd.DataFrame, metric: str, fmt: str) -> str:
    """Render a summary as text, markdown or csv (csv keeps raw numbers)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    pct = "accuracy" in metric
    scale, digits = (100.0, 1) if pct else (1.0, 4)

    def num(v, signed=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v * scale:+.{digits}f}" if signed else f"{v * scale:.{digits}f}"

    shown = pd.DataFrame({c: table[c].astype(str) for c in table.columns
                          if c not in ("mean", "std", "n", "vs_scratch", "vs_best_baseline", "significant", "seconds")})
    shown["seeds"] = table["n"].astype(int).astype(str)
    shown[metric + (" %" if pct else "")] = [f"{num(m)} ± {num(s)}" for m, s in zip(table["mean"], table["std"])]
    if "vs_scratch" in table:
        shown["vs scratch"] = [num(v, True) for v in table["vs_scratch"]]
        shown["vs best baseline"] = [
            num(v, True) + (" *" if sig else "") for v, sig in zip(table["vs_best_baseline"], table["significant"])
        ]
    if "seconds" in table:
        shown["s/run"] = [f"{v:.1f}" if v == v else "" for v in table["seconds"]]
    if fmt == "markdown":
        header = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
        return "\n".join([header, rule, *rows])
    return shown.to_string(index=False)


def plot(df: pd.DataFrame, metric: str, path: str) -> None:
    """Label efficiency: `metric` against labels per class (log scale), one line per method,
    the spread over seeds (mean ± std) shaded; one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(df["data"].dropna().unique()) if "data" in df else [None]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        part = df if name is None else df[df["data"] == name]
        budgets = sorted({_budget_key(b) for b in part["labels_per_class"]})
        finite = [b for b in budgets if b != math.inf]
        at_all = (max(finite) * 2 if finite else 1.0)  # where "all" is drawn
        for method, runs in sorted(part.groupby("method"), key=lambda kv: kv[0]):
            stats = runs.assign(x=runs["labels_per_class"].map(lambda b: min(_budget_key(b), at_all))).groupby("x")[
                metric].agg(["mean", "std"]).fillna(0.0).sort_index()
            scale = 100.0 if "accuracy" in metric else 1.0
            line, = ax.plot(stats.index, stats["mean"] * scale, marker="o", label=method,
                            linestyle="--" if methods.is_baseline(method) else "-")
            ax.fill_between(stats.index, (stats["mean"] - stats["std"]) * scale,
                            (stats["mean"] + stats["std"]) * scale, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ticks = finite + ([at_all] if math.inf in budgets else [])
        ax.set_xticks(ticks, [f"{t:g}" for t in finite] + (["all"] if math.inf in budgets else []))
        ax.set_xlabel("labeled images per class")
        ax.set_ylabel(metric + (" (%)" if "accuracy" in metric else ""))
        ax.set_title(str(name) if name is not None else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pretraining_cost(df: pd.DataFrame) -> list[str]:
    """One line per finished pretraining: the one-off cost every fine-tune of its encoder reuses."""
    if "command" not in df:
        return []
    done = df[(df["command"] == "pretrain") & (df["status"].fillna("ok") == "ok")]
    return [f"pretraining {r.objective} on {r.data}: {r.seconds:.0f}s ({r.images_per_second:.0f} images/s), "
            f"reused by every fine-tune of its encoder" for r in done.itertuples()]


def run(cfg: CompareConfig, log=print) -> pd.DataFrame:
    if cfg.plot:
        artifacts.check_writable(cfg.plot, "--plot")
    everything = results.read_results(cfg.results, warn=lambda m: log(f"warning: {m}"))
    df = everything
    if "command" in df:
        df = df[df["command"] == "fine-tune"]
    if "status" in df:
        df = df[df["status"].fillna("ok") == "ok"]
    if df.empty:
        raise TransferError(f"{cfg.results} has no finished fine-tune runs to compare")
    by = list(cfg.by)
    unknown = [c for c in [*by, cfg.metric] if c not in df.columns]
    if unknown:
        raise TransferError(f"unknown column(s) {unknown}. Available: {', '.join(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df[cfg.metric]):
        raise TransferError(f"metric column '{cfg.metric}' is not numeric")
    table = summarize(df, by, cfg.metric)
    log(format_table(table, cfg.metric, cfg.format))
    if cfg.plot:
        if not {"method", "labels_per_class"} <= set(df.columns):
            raise TransferError("--plot needs the columns method and labels_per_class")
        plot(df, cfg.metric, cfg.plot)
        log(f"wrote {cfg.plot}")
    if cfg.format != "csv" and "vs_best_baseline" in table:
        log("* difference from the best baseline (scratch, random-frozen, pixels-logreg) exceeds the spread over seeds")
    if cfg.format != "csv":
        for line in pretraining_cost(everything):
            log(line)
    return table
