"""Lists of images as CSV files, read and written by one rule for every command: manifests
(`path[,label]`), the lists `select` writes and a fine-tune's `labeled.csv`, `--exclude` lists.

Reading: UTF-8 with or without a byte-order mark (a spreadsheet's "CSV UTF-8"), any line
ends (CRLF included), extra columns ignored, only a regular file (a named pipe would block).
Paths: an absolute path is used as it is; a relative one is relative to **the CSV's own
folder**, wherever the command runs. Writing: a path to a file is written relative to the
list's folder (so the list reads back from anywhere, and moves with the images); a built-in
or in-memory image's name (`digits[12]`) as it is.
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from transfer import outputs
from transfer.errors import TransferError


@dataclass(frozen=True)
class Table:
    """A CSV's columns and rows (each a dict of stripped strings), and where it is."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]

    def resolve(self, value: str) -> Path:
        """A `path` cell as a path: absolute as it is, relative to the CSV's folder."""
        return resolve(self.path, value)


def resolve(csv_path: str | os.PathLike, value: str) -> Path:
    """The file a list's `path` cell names: absolute as it is, else relative to the list's folder."""
    p = Path(value)
    return p if p.is_absolute() else Path(csv_path).parent / p


def is_regular(path: str | os.PathLike) -> bool:
    """A regular file (not a folder, named pipe, socket or device: a read of those can block);
    OSError when it cannot be looked at."""
    return stat.S_ISREG(os.stat(path).st_mode)


def check_regular(path: str | os.PathLike, what: str) -> None:
    """Refuse a path that is not a regular file (a folder, a named pipe, a device) before it is opened."""
    try:
        regular = is_regular(path)
    except OSError as exc:
        raise TransferError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    if not regular:
        raise TransferError(f"{what} {path} is not a regular file")


def read(path: str | os.PathLike, what: str, required: tuple[str, ...] = ("path",)) -> Table:
    """The CSV at `path`, with the `required` columns; one `TransferError` line for anything else."""
    path = Path(path)
    if not path.exists():
        raise TransferError(f"{what} {path} not found")
    check_regular(path, what)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TransferError(f"{what} {path}: not a readable CSV file ({exc})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise TransferError(f"{what} {path}: needs a {' and a '.join(repr(c) for c in missing)} column. "
                            f"Received columns: {columns}")
    return Table(path, columns, rows)


def portable(name: str, list_path: str | os.PathLike) -> str:
    """How a list at `list_path` names an image: a file relative to the list's folder (POSIX
    separators), a built-in or in-memory image's name as it is."""
    if not os.path.isfile(name):
        return name
    return Path(os.path.relpath(os.path.abspath(name), os.path.abspath(Path(list_path).parent))).as_posix()


def write_label_list(path: str | os.PathLike, names, labels) -> Path:
    """A list of images and their labels, `path,label` (a label may be empty, to fill in): what
    `transfer select` writes, a fine-tune's labeled.csv, and what `select --exclude` and
    `fine-tune --data` read back (paths relative to the list, by the rule above)."""
    return outputs.write_csv(path, ["path", "label"], ((portable(str(n), path), label) for n, label in zip(names, labels)))
