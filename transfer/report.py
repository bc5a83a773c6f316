"""The comparison in words, and as one self-contained HTML page (images embedded, viewable offline)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from transfer import methods, stats


class Verdict(str):
    """A verdict sentence that also keeps what the headline reads: the data set, the budget
    (as said), the outcome ("paid", "lost" or "unclear"), the difference with its interval, and
    the route (the best pretrained method or pipeline)."""

    def __new__(cls, sentence: str, data, budget: str, outcome: str, difference: str, route: str):
        made = super().__new__(cls, sentence)
        made.data, made.budget, made.outcome, made.difference, made.route = data, budget, outcome, difference, route
        return made


def headline(sentences: list[str], context: list[str]) -> list[str]:
    """One sentence per data set, first: at which budgets pretraining paid (each with its
    difference and route), at which it was not clear, at which it lost. Reads the per-budget
    verdicts (labels per class) and the "any selection" ones (labels in all); the per-selection
    cells stay in the detailed sentences."""
    said = [s for s in sentences if isinstance(s, Verdict) and s.budget]
    out = []
    for data in dict.fromkeys(s.data for s in said):
        mine = [s for s in said if s.data == data]
        parts = []
        paid = [s for s in mine if s.outcome == "paid"]
        if paid:
            parts.append("pretraining pays at " + "; ".join(f"{s.budget} ({s.difference}, {s.route})" for s in paid))
        for outcome, words in (("unclear", "not clearly at "), ("lost", "it loses at ")):
            these = [s.budget for s in mine if s.outcome == outcome]
            if these:
                parts.append(words + ", ".join(these))
        name = f"{data}: " if data is not None else ""
        out.append(name + ("; ".join(parts) if parts else "no budget judged") + ".")
    return out


def verdicts(table: pd.DataFrame, context: list[str], metric: str, budgets: dict | None = None) -> list[str]:
    """One sentence per group of the summary (`context`: its grouping columns but `method`, e.g.
    data and label budget): did the best pretrained method beat the best method without
    pretraining, by how much, and how sure is that (the summary's paired 95% interval)?
    `budgets`: what each budget name is (`comparison.budgets` of the rows summarized)."""
    budgets = budgets or {}
    if not {"method", "vs_best_baseline", "best_baseline"} <= set(table.columns):
        return []
    scale, unit = _scale(metric)
    out = []
    for keys, group in (table.groupby(context, dropna=False, sort=False) if context else [((), table)]):
        pretrained = group[~group["method"].map(methods.is_baseline)]
        if pretrained.empty or not group["best_baseline"].iloc[0]:
            continue
        best = pretrained.loc[pretrained["mean"].idxmax()]
        values = dict(zip(context, keys if isinstance(keys, tuple) else (keys,)))
        where = ", ".join(_describe(c, v, budgets) for c, v in values.items())
        diff = best["vs_best_baseline"] * scale
        # Within a total budget every learner has the same labels, so what the cell weighs is the
        # start; when an encoder chose those labels, pretraining is in every pipeline of the cell.
        chosen = budgets.get(values.get("labels_per_class"), {})
        how = _said(chosen["how"]) if chosen.get("how") else None
        word, sure, outcome, interval = _judgement(
            diff, best["ci_low"] * scale, best["ci_high"] * scale, best["significant"], best["comparison"],
            best["paired_seeds"], "the pretrained start" if how else "pretraining", candidates=len(pretrained))
        pair = (f"Best with a pretrained start, {best['method']}, vs best without, {best['best_baseline']}" if how
                else f"Best pretrained {best['method']} vs best baseline {best['best_baseline']}")
        sentence = f"{where}: {word}. {pair}: {diff:+.1f}{unit} ({sure}){_chosen_by_encoder(chosen.get('features'))}."
        budget = ", ".join(_describe(c, v, budgets) for c, v in values.items() if c != "data")  # arch, budget, ...
        out.append(Verdict(sentence, values.get("data"), "" if how else budget, outcome,
                           _short_difference(diff, interval, unit), best["method"]))
    return out


def _short_difference(diff: float, interval: tuple[float, float] | None, unit: str) -> str:
    """'+4.6 [+2.5, +6.6]': a difference with the interval its verdict judged it on (or with its unit)."""
    if interval is None:
        return f"{diff:+.1f}{unit}"
    return f"{diff:+.1f} [{stats.bound(interval[0])}, {stats.bound(interval[1])}]"


def _scale(metric: str) -> tuple[float, str]:
    """(factor, unit) a metric's differences are said in: accuracies as points, others as they are."""
    return (100.0, " points") if "accuracy" in metric else (1.0, "")


def _chosen_by_encoder(features: str | None) -> str:
    """The caveat of a cell whose labels a pretrained encoder chose (every learner in it used pretraining)."""
    if not methods.chosen_by_encoder(features):
        return ""
    return f"; every learner here learned from the labels the {features} encoder chose (the choice is weighed " \
           "across selections)"


def _judgement(diff: float, low: float, high: float, significant: bool, comparison: str, seeds,
               subject: str = "pretraining", candidates: int = 1) -> tuple[str, str, str, tuple | None]:
    """(verdict word, how sure, outcome: "paid", "lost" or "unclear", the interval judged on or
    None) of a difference from the best without pretraining and its interval. When the side
    judged is the best of several `candidates` picked by their means, the interval is widened
    for the picking (`stats.best_of`, Bonferroni) and the verdict follows it."""
    widened = ""
    if candidates > 1 and comparison == "paired" and not math.isnan(low) and low != high:  # a spread to widen
        low, high = stats.best_of(diff, low, high, seeds, candidates)
        significant = stats.excludes_zero(low, high)
        widened = f", widened for the best of {candidates} (Bonferroni)"
    interval = None
    if math.isnan(low):
        sure = "no interval: too few runs"
    elif low == high == diff == 0:
        sure = f"the same result on every one of {int(seeds)} paired seed(s)"
    else:
        sure = f"95% CI {stats.bound(low)} to {stats.bound(high)}{widened}, {comparison} over {int(seeds)} seed(s)"
        interval = (low, high)
    if significant and diff > 0:
        return f"{subject} paid", sure, "paid", interval
    if significant:
        return f"{subject} did NOT pay (it lost)", sure, "lost", interval
    return f"no clear difference: {subject} did not pay", sure, "unclear", interval


def pipeline_verdicts(best: pd.DataFrame, metric: str) -> list[str]:
    """One sentence per total budget (`transfer.comparison.best_pipelines`): the best pipeline
    with a pretrained encoder (to choose the labels, to start from, or both) against the best
    without one, whichever the selection."""
    scale, unit = _scale(metric)
    out = []
    for _, b in best.iterrows():
        where = ", ".join(str(b[c]) for c in best.columns[: list(best.columns).index("labels")])
        word, sure, outcome, interval = _judgement(b["diff"] * scale, b["low"] * scale, b["high"] * scale,
                                                   b["significant"], b["comparison"], b["seeds"],
                                                   candidates=int(b.get("candidates", 1)))
        pipe = {side: f"{_said(b[side + '_selection'])}, then {b[side + '_method']}: {b[side + '_mean'] * scale:.1f}"
                for side in ("with", "without")}
        sentence = (f"{where + ', ' if where else ''}{int(b['labels'])} labels in all, any selection: {word}. Best "
                    f"pipeline with a pretrained encoder ({pipe['with']}) vs best without one ({pipe['without']}): "
                    f"{b['diff'] * scale:+.1f}{unit} ({sure}){_unranked(b)}.")
        route = f"{_said(b['with_selection'])}, then {b['with_method']}"
        others = [str(b[c]) for c in best.columns[: list(best.columns).index("labels")] if c != "data"]
        out.append(Verdict(sentence, b["data"] if "data" in best.columns else None,
                           ", ".join([*others, f"{int(b['labels'])} labels in all"]), outcome,
                           _short_difference(b["diff"] * scale, interval, unit), route))
    return out


def choice_verdicts(gains: pd.DataFrame, metric: str) -> list[str]:
    """One sentence per total budget (`transfer.comparison.choice_gains`): for how many learners
    the best choice of images beat a blind draw of the same size, and each learner's difference."""
    if gains.empty:
        return []
    scale, unit = _scale(metric)
    keys = list(gains.columns[: list(gains.columns).index("labels") + 1])
    out = []
    for key, group in gains.groupby(keys, dropna=False, sort=False):
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        where = ", ".join(str(values[c]) for c in keys[:-1])
        beat, each = 0, []
        for _, g in group.iterrows():
            _, sure, outcome, _ = _judgement(g["diff"] * scale, g["low"] * scale, g["high"] * scale, g["significant"],
                                             g["comparison"], g["seeds"], candidates=int(g.get("candidates", 1)))
            beat += outcome == "paid"  # its interval (widened for the choosing) above zero
            each.append(f"{g['method']} on {_said(g['choice'])}, {g['choice_mean'] * scale:.1f} against "
                        f"{g['blind_mean'] * scale:.1f}: {g['diff'] * scale:+.1f}{unit} ({sure})")
        left_out = int(group["unranked"].sum())
        out.append(f"{where + ', ' if where else ''}{int(values['labels'])} labels in all, which images: the best "
                   f"choice beat a blind draw for {beat} of {len(group)} learner(s). " + "; ".join(each)
                   + (f"; {left_out} choice(s) run on fewer seeds not ranked" if left_out else "") + ".")
    return out


def _unranked(best: pd.Series) -> str:
    n = int(best["unranked"])
    return f"; {n} pipeline(s) run on fewer seeds not ranked" if n else ""


def _said(how: str) -> str:
    """How a total budget's labels were chosen, as a verdict says it ("typiclust on pixels", "a blind draw")."""
    return {"random": "a blind draw", "stratified": "a stratified draw (the oracle)"}.get(how, how)


def _describe(column: str, value, budgets: dict) -> str:
    """A summary group's key as a verdict names it: "10 labels in all (random)", "5 labels/class", "digits"."""
    if column == "labels_per_class":
        chosen = budgets.get(value, {})
        return f"{chosen['size']:g} labels in all ({chosen['how']})" if chosen.get("how") else f"{value} labels/class"
    return str(value) if column in ("data", "table") else f"{column} {value}"


OUTCOME_CLASS = {"paid": "pays", "lost": "loses", "unclear": "unclear"}


def page(title: str, summary_html: str, sentences: list[str], plot_png: str | None, costs_html: str,
         notes: list[str], headline: list[str] = (), provenance: list[tuple[str, str]] = ()) -> str:
    """One HTML page: the headline, the verdicts (coloured: pays green, loses red, unclear grey),
    the summary table, the plot (embedded), the costs, and where the numbers come from."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px}"
             "img{max-width:100%}.pays{color:#11661d}.loses{color:#a11212}.unclear{color:#555}"
             ".headline{font-size:1.15em}</style>", f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='headline'>{html.escape(h)}</p>" for h in headline]
    parts += ["<h2>Verdict</h2><ul>"]
    parts += [f"<li class='{OUTCOME_CLASS.get(getattr(s, 'outcome', ''), 'unclear')}'>{html.escape(s)}</li>"
              for s in sentences] or ["<li>no pretrained method to judge</li>"]
    parts += ["</ul>", "<h2>Summary (mean ± std over seeds)</h2>", summary_html]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    if plot_png:
        data = base64.b64encode(Path(plot_png).read_bytes()).decode()
        parts.append(f"<h2>Label efficiency</h2><img alt='label efficiency' src='data:image/png;base64,{data}'>")
    parts += ["<h2>Cost</h2>", costs_html]
    if provenance:
        parts += ["<h2>Provenance</h2><table>"]
        parts += [f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>" for k, v in provenance]
        parts += ["</table>"]
    return "\n".join(parts) + "\n"
