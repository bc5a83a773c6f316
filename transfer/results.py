"""The experiment table: one CSV row per run, append-only, safe under concurrent appends.

Columns are stable snake_case; new ones may be added (old rows get empty
values), none renamed. A value that does not apply is left empty.

A fine-tune's label budget is data: `labels_per_class` (N, or `all`) for a draw of N of every
class; for a total, `labels` with how they were chosen (`selection`, `purity`, and the features
a selection by features used: `select_features`, `select_features_readout`). Read back, a
total's `labels_per_class` is its name ("20 in all (typiclust on contrastive)", made from those
columns by `budget_name`) so that budgets group, filter and show as one column; tables written
before the budget had columns hold that name and are migrated as they are read.
"""

from __future__ import annotations

import csv
import io
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from transfer import stopping
from transfer.errors import TransferError

COLUMNS = [
    "run_id", "timestamp", "command", "status", "experiment", "data", "test_data", "encoder", "objective",
    "method", "arch", "image_size", "channels", "freeze", "unfreeze_top", "readout", "head", "labels_per_class",
    "n_train", "n_test", "seed", "epochs", "batch_size", "learning_rate", "test_accuracy",
    "test_loss", "train_accuracy", "recon_mse", "baseline_zeros_mse", "baseline_mean_mse",
    "test_in_pretraining", "encoder_unchanged", "skipped_files", "skipped_data", "skipped_test_data",
    "skipped_unlabeled", "seconds", "images_per_second", "peak_memory_mb", "run_dir", "error",
    "gflops_per_second", "train_flops_per_image", "strategy", "replicas", "workers",
    "knn_accuracy", "probe_accuracy", "knn_error_vs_pixels", "probe_error_vs_pixels", "feature_dim",
    "images_trained", "train_seconds", "cpu_seconds", "attempts",
]
# A total label budget, as data (`budget_name` names it).
BUDGET = ("labels", "selection", "purity", "select_features", "select_features_readout")


class Stopwatch:
    """A row's `seconds` (wall time) and `cpu_seconds` (this process's processor time, all its
    threads) since it was made, on top of what earlier processes of the same run spent."""

    def __init__(self, seconds: float = 0.0, cpu_seconds: float = 0.0):
        self._wall, self._cpu = time.perf_counter() - seconds, time.process_time() - cpu_seconds

    def read(self) -> dict:
        return {"seconds": round(time.perf_counter() - self._wall, 2),
                "cpu_seconds": round(time.process_time() - self._cpu, 2)}


def new_run_id(command: str) -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{command}-{uuid.uuid4().hex[:6]}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def row(command: str, cfg, run_id: str | None = None, **fields) -> dict:
    """A finished run's row, as every command makes it: who ran (run_id, timestamp, command,
    status ok), the settings every command's config has (experiment, data, seed), then `fields`."""
    return {"run_id": run_id or new_run_id(command), "timestamp": now(), "command": command, "status": "ok",
            "experiment": cfg.experiment, "data": cfg.data, "seed": cfg.seed, **fields}


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def target(path: str | os.PathLike) -> Path:
    """The file a table path writes to: a symbolic link's target (the link stays a link)."""
    return Path(os.path.realpath(path))


def check_table(path: str | os.PathLike, option: str = "--results") -> None:
    """Refuse, before any work, a path whose file exists and is not a results table (its
    header does not start with run_id): appending would damage a file the user never
    meant as one (a symlink to /etc/passwd, a notes.csv of their own)."""
    real = target(path)
    if not real.is_file() or real.stat().st_size == 0:
        return
    try:
        with open(real, encoding="utf-8", newline="") as f:
            first = f.readline(4096)
        header = next(csv.reader([first]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        header = []
    if not header or header[0] != "run_id":
        shown = f" (through the link {path})" if real != Path(path).absolute() else ""
        raise TransferError(f"{option} {real}{shown} is not a results table (its first line does not start with "
                            f"run_id): it is left untouched; give a new file or an existing results table")


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row under a file lock; widen the header if the row brings new columns.
    A symbolic link is written through; a file that is not a results table is refused."""
    path = target(path)
    unknown = [k for k in row if k not in COLUMNS]
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60), stopping.critical():  # a stop signal waits for the row
        check_table(path)  # under the lock: nothing below cuts or rewrites a file that is not a table
        _drop_torn_tail(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a widening killed mid-way (SIGKILL)
            stale.unlink(missing_ok=True)
        header = _read_header(path)
        if header is None:
            header = COLUMNS + unknown
            text = _csv_line(header) + _csv_line([_format(row.get(c)) for c in header])
            with open(path, "a", encoding="utf-8", newline="") as f:
                f.write(text)
            return
        missing = [c for c in list(COLUMNS) + unknown if c not in header]
        if missing:
            _widen(path, header, header + missing)
            header = header + missing
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(_csv_line([_format(row.get(c)) for c in header]))


def _drop_torn_tail(path: Path) -> str | None:
    """Cut a half-written last line (a crash mid-append); returns what was cut. Call under the lock."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    return data[keep:].decode("utf-8", errors="replace")


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _read_header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f), None)


def _widen(path: Path, old: list[str], new: list[str]) -> None:
    """Rewrite the table with more columns (atomically; called under the lock)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=new, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_results(path: str | os.PathLike, warn=None):
    """The table as a pandas DataFrame.

    A half-written last line (no final newline: a process died mid-append) is
    left out, and `warn` (default: warnings.warn) is told; the file itself is
    not changed by reading.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TransferError(f"results table not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            cut = text.rfind("\n") + 1
            (warn or _warn)(f"{path}: skipped a half-written last line: {text[cut:][:60]!r}")
            text = text[:cut]
        table = pd.read_csv(io.StringIO(text), dtype={"run_id": str, "labels_per_class": str, "selection": str,
                                                      "select_features": str, "select_features_readout": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TransferError(f"{path}: not a readable results table ({str(exc).splitlines()[0]})") from None
    return _named_budgets(table)


def selection_name(selection, purity=None, features=None, readout=None) -> str:
    """How a total budget's labels were chosen, as said: "random", "typiclust on contrastive",
    "probcover at purity 0.6 on pixels", "kcenter on contrastive (avg)" (a readout other than the
    encoder's default is named: choices through different readouts are different budgets)."""
    how = str(selection)
    if _given(purity):
        how += f" at purity {float(purity):g}"
    if _given(features):
        how += f" on {features}" + (f" ({readout})" if _given(readout) else "")
    return how


def budget_name(labels_per_class=None, labels=None, selection=None, purity=None, select_features=None,
                select_features_readout=None) -> str:
    """A budget as a table shows it: N (per class), "all", or "T in all (how they were chosen)"."""
    if not _given(labels):
        return str(labels_per_class) if _given(labels_per_class) else "all"
    how = selection_name(selection if _given(selection) else "random", purity, select_features,
                         select_features_readout)
    return f"{int(float(labels))} in all ({how})"


def _given(value) -> bool:
    return value is not None and value == value and value != ""  # NaN != NaN: an empty cell read by pandas


def _named_budgets(table):
    """The table with each total budget named in `labels_per_class` (`budget_name`), from its
    columns; rows of tables written before those columns existed get them from the name."""
    if "labels_per_class" not in table:
        return table
    for column in BUDGET:
        if column not in table:
            table[column] = None
    table = table.astype({c: object for c in ("selection", "select_features", "select_features_readout")})
    old = table["labels_per_class"].str.contains(" in all (", regex=False, na=False)  # now written empty
    for i in table.index[old]:
        table.loc[i, list(BUDGET)] = _migrated(table.loc[i, "labels_per_class"])
    total = table["labels"].notna()
    table.loc[total, "labels_per_class"] = [budget_name(**row) for row in table.loc[total, ["labels_per_class",
                                                                                           *BUDGET]].to_dict("records")]
    return table


def _migrated(name: str) -> list:
    """The budget columns of a name written before they existed ("20 in all (probcover at purity
    0.6 on contrastive (avg))"): the one place a budget's name is read back."""
    total, _, how = name.partition(" in all (")
    how = how[:-1] if how.endswith(")") else how
    how, _, features = how.partition(" on ")
    how, _, purity = how.partition(" at purity ")
    readout = None
    if features.endswith(")") and " (" in features:
        features, _, readout = features[:-1].rpartition(" (")
    return [int(total), how, float(purity) if purity else None, features or None, readout]


def read_tables(paths, warn=None):
    """Several tables read as one DataFrame: each row keeps the table it came from (`table`
    column, the path as given); columns are aligned by name, missing values left empty."""
    import pandas as pd

    frames = [read_results(p, warn).assign(table=str(p)) for p in paths]
    return pd.concat(frames, ignore_index=True, sort=False)


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)
