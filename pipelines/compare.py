"""`transfer compare`: read the experiment tables, print the summary and verdicts, write the plot
and the page (the summaries themselves: `transfer.comparison`)."""

from __future__ import annotations

import os
import sys
import tempfile

import pandas as pd

from transfer import __version__, artifacts, comparison, outputs, report, results, rowfilter
from transfer.config import CompareConfig
from transfer.errors import TransferError


def run(cfg: CompareConfig, log=print) -> pd.DataFrame:
    if cfg.where:
        rowfilter.check(cfg.where)  # refused before anything is read or written
    outputs.distinct({"--plot": cfg.plot, "--html": cfg.html}, {f"table {t}": t for t in cfg.tables or (cfg.results,)})
    for path, option, kind in ((cfg.plot, "--plot", outputs.PNG), (cfg.html, "--html", outputs.HTML)):
        if path:
            outputs.check(path, option, kind)  # replaced only if it is a picture or page compare wrote
    tables = cfg.tables or (cfg.results,)
    everything = results.read_tables(tables, warn=lambda m: _note(f"warning: {m}"))
    df = comparison.finished_fine_tunes(everything, cfg.where, " ".join(tables))
    by = list(cfg.by)
    comparison.known(df, [*by, cfg.metric], "--by/--metric")
    if not pd.api.types.is_numeric_dtype(df[cfg.metric]):
        raise TransferError(f"metric column '{cfg.metric}' is not numeric")
    df, split = comparison.split_settings(df, by)
    pooled = comparison.repeated_seeds(df, by)
    for note in pooled:
        _note(note)
    table = comparison.summarize(df, by, cfg.metric)
    context = [c for c in by if c != "method"]
    sentences = report.verdicts(table, context, cfg.metric, comparison.budgets(df))
    sentences += report.pipeline_verdicts(comparison.best_pipelines(df, context, cfg.metric), cfg.metric)
    sentences += report.choice_verdicts(comparison.choice_gains(df, context, cfg.metric), cfg.metric)
    headline = report.headline(sentences, context)
    words = cfg.format in ("text", "markdown")
    if words:  # the answer first, then the table behind it
        for line in headline:
            log(_wrapped(line))
    log(comparison.format_table(comparison.select(table, cfg), cfg.metric, cfg.format))
    if (cfg.plot or cfg.html) and not {"method", "labels_per_class"} <= set(df.columns):
        raise TransferError("--plot and --html need the columns method and labels_per_class")
    if cfg.plot:
        comparison.plot(df, cfg.metric, cfg.plot)
        _note(f"wrote {cfg.plot}")
    for line in split:  # beside the table it explains; stderr when stdout is data (csv, json)
        (log if words else _note)(line)
    if words:
        if "vs_best_baseline" in table:
            log(comparison.NOTE)
        detail = sentences if cfg.verbose else []
        used = comparison.pretrainings(everything, df)
        for line in detail + comparison.pretraining_cost(used) + comparison.feature_quality(everything):
            log(_wrapped(line))
        if sentences and not cfg.verbose:
            n = len(sentences)
            log(f"({n} verdict sentence{'s' if n != 1 else ''}, one per budget and selection: --verbose)")
    if cfg.html:
        write_html(cfg, table, df, everything, headline, sentences, [*split, *pooled])
        _note(f"wrote {cfg.html}")
    return table


def _wrapped(line: str) -> str:
    """A sentence wrapped to the terminal's width when stdout is one; as it is into a file or pipe."""
    if not sys.stdout.isatty():
        return line
    import shutil
    import textwrap

    return textwrap.fill(line, width=max(shutil.get_terminal_size().columns - 1, 40), subsequent_indent="  ")


def _note(message: str) -> None:
    """What compare says about files and rows goes to stderr: stdout is the table alone (a CSV
    or markdown to redirect into a file)."""
    print(message, file=sys.stderr)


def command(cfg: CompareConfig) -> str:
    """The compare command line that gives `cfg` (its options that differ from the defaults)."""
    import dataclasses
    import shlex

    words = ["transfer", "compare", *(cfg.tables or ())]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "tables" or value == field.default or value in (None, (), False):
            continue
        option = "--" + field.name.replace("_", "-")
        words += [option] if value is True else [option, ",".join(map(str, value)) if isinstance(value, tuple)
                                                 else str(value)]
    return " ".join(shlex.quote(w) for w in words)


def provenance(cfg: CompareConfig) -> list[tuple[str, str]]:
    """Where the page's numbers come from: the command, the filter, each table with its SHA-256,
    the toolkit's version and code fingerprint, the date."""
    import hashlib
    from datetime import datetime, timezone

    tables = [(f"table {t}", hashlib.sha256(open(t, "rb").read()).hexdigest()) for t in cfg.tables or (cfg.results,)]
    return [("command", command(cfg)), ("filter", cfg.where or "none"), *tables,
            ("transfer", f"{__version__}, code {artifacts.code_fingerprint()[:16]}"),
            ("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]


def write_html(cfg: CompareConfig, table, df, everything, headline, sentences, warnings=()) -> None:
    """The self-contained page: the headline, the verdicts coloured by outcome, summary (with the
    notes about split or pooled runs below it), label-efficiency plot (embedded), costs, provenance."""
    with tempfile.TemporaryDirectory() as tmp:
        png = cfg.plot or os.path.join(tmp, "plot.png")  # drawn already when --plot was given
        if not cfg.plot:
            comparison.plot(df, cfg.metric, png)
        summary = comparison.rendered(comparison.select(table, cfg), cfg.metric).to_html(index=False)
        used = comparison.pretrainings(everything, df)
        text = report.page(f"transfer compare: {', '.join(cfg.tables or (cfg.results,))}", summary, sentences, png,
                           comparison.costs(df, used).to_html(index=False, na_rep=""),
                           [comparison.NOTE, *warnings, *comparison.pretraining_cost(used)],
                           headline=headline, provenance=provenance(cfg))
    outputs.write_text(cfg.html, text)
