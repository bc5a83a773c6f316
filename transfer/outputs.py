"""Every file a command writes, by one set of rules (docs/safety.md, "Outputs"):

- checked before any work (`check`): its folder can be made and written, it is not a folder,
  it is none of the command's inputs nor another of its outputs (`distinct`);
- an existing file is replaced only when it is of the kind the command writes, recognised by
  its first bytes (`Kind`); commands whose output is a named file also need `--overwrite`;
- written under a temporary name in the target's folder and renamed into place (`replace`),
  so a reader sees the old file or the new one, never half of one, and a symbolic link at
  the target is replaced, never written through (the file it pointed to is left as it was).

The results table is the one exception, on purpose: appended in place under a lock, through
a link (`transfer.results`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from transfer import stopping
from transfer.errors import TransferError

BOM = b"\xef\xbb\xbf"
HEAD = 512  # bytes read to recognise a file's kind


@dataclass(frozen=True)
class Kind:
    """A kind of file a command writes, recognised by its content (`recognise(path)`)."""

    name: str
    recognise: Callable[[Path], bool]


def head(path: Path, size: int = HEAD) -> bytes:
    """The first `size` bytes of a regular file (b"" for anything else)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return b""
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def starting(name: str, *prefixes: bytes) -> Kind:
    """Files whose first bytes (after a UTF-8 byte-order mark and white space) start with one of `prefixes`."""
    return Kind(name, lambda path: head(path).removeprefix(BOM).lstrip().lower().startswith(
        tuple(p.lower() for p in prefixes)))


def csv_with(*columns: str) -> Kind:
    """A CSV whose header starts with `columns`."""
    return starting(f"CSV table ({','.join(columns)},...)", ",".join(columns).encode())


def json_record(path: Path, keys: tuple[str, ...]) -> dict | None:
    """The JSON object at `path` if it holds every one of `keys` (a record the tool wrote), else None."""
    try:
        obj = json.loads(head(path, 1 << 20).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and all(k in obj for k in keys) else None


def json_with(name: str, *keys: str) -> Kind:
    """A JSON object holding `keys` (a record the tool wrote)."""
    return Kind(name, lambda path: json_record(path, keys) is not None)


LABEL_LIST = csv_with("path", "label")
PNG = starting("PNG image", b"\x89PNG\r\n\x1a\n")
HTML = starting("HTML page", b"<!doctype html")
NPY = starting("NumPy array file", b"\x93NUMPY")


def check(path: str | os.PathLike, what: str, kind: Kind | None = None, overwrite: bool | None = None,
          create: bool = True) -> Path:
    """Refuse, before any work, an output file that could not or must not be written: its folder
    is a file or cannot be made or written; the path is a folder; it exists and (`overwrite` is
    False: the command has --overwrite and it was not given) or (it is not of `kind`: not a file
    this command writes). `overwrite=None`: the command replaces its own kind of file freely
    (compare's plot and page). `create=False` (a dry run) makes no folder and writes no probe:
    the nearest folder that exists must be writable. Returns the path."""
    path = Path(path)
    writable_folder(path.parent, f"{what} {path} cannot be written", create)
    if path.is_dir():
        raise TransferError(f"{what} {path} is a directory; give a file path")
    if not (path.exists() or path.is_symlink()):
        return path
    if overwrite is False:
        raise TransferError(f"{what} {path} already exists; pass --overwrite to replace it")
    if kind is not None and path.exists() and not path.is_file():
        raise TransferError(f"{what} {path} is not a regular file; it is never replaced")
    if kind is not None and path.exists() and not kind.recognise(path):
        raise TransferError(f"{what} {path} exists and is not a {kind.name} as this command writes; it is "
                            "never replaced (move it away or choose another path)")
    if path.exists() and not path.is_symlink() and not os.access(path, os.W_OK):
        raise TransferError(f"{what} {path} cannot be written: it is not writable")
    return path


def writable_folder(folder: str | os.PathLike, problem: str, create: bool = True) -> None:
    """Create `folder` if needed; refuse one that cannot be created or written, saying `problem`.
    `create=False`: nothing is made; the nearest existing folder on the way must be a writable folder."""
    folder = Path(folder)
    if not create:
        existing = folder.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise TransferError(f"{problem}: {existing} is not a writable folder")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferError(f"{problem}: its folder {folder} cannot be created ({exc.strerror or exc})") from None
    try:  # a file made and removed: what the permissions, the file system and its mount say, together
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".transfer-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TransferError(f"{problem}: {folder} is not writable ({exc.strerror or exc})") from None


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def distinct(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None] = {}) -> None:
    """Refuse two outputs that are one file (`select --out T.csv --results T.csv`), or an output
    that is one of the inputs (`--out` onto the `--data` manifest), before anything is written."""
    given = [(what, Path(p)) for what, p in outputs.items() if p]
    for i, (what, path) in enumerate(given):
        for other, second in given[i + 1:]:
            if _same(path, second):
                raise TransferError(f"{what} and {other} are the same file ({path}); give each its own path")
        for source, p in inputs.items():
            if p and Path(p).exists() and _same(path, Path(p)):
                raise TransferError(f"{what} {path} is the {source}; it would be overwritten by the output")


def replace(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write `path` by `write(temporary path)` (the temporary file has the target's suffix, for
    writers that go by it), then rename it into place. A stop signal during `write` (a long one
    checks `stopping.check()`) ends it with the old file in place and no temporary file left;
    one during the rename waits for it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        with stopping.critical():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A text file (UTF-8), replaced atomically."""
    return replace(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def write_csv(path: str | os.PathLike, header: list[str], rows) -> Path:
    """A CSV table (`\\n` line ends), replaced atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, text.getvalue())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name without it
            np.save(f, array, allow_pickle=False)

    return replace(path, save)


def json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
