"""Label Studio, the open-source labeling tool most teams run, as the place the chosen images
are labeled: `select --format label-studio` writes the tasks to import and the labeling
config; `fine-tune --data EXPORT` (and `select --exclude EXPORT`) read Label Studio's JSON,
JSON-MIN and CSV exports back as a `path,label` list.

The formats are Label Studio's documented ones (labelstud.io/guide/tasks, /task_format,
/export):

- a task: `{"data": {"image": URL, ...}}`; the image is served by Label Studio's local-files
  storage, `/data/local-files/?d=<path below LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>` (start
  it with `LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true` and that root). Label Studio serves
  a file only below the path of a project's Local files storage, and refuses a storage at
  the document root itself, so the root is the folder above the images' own folder, which
  is the storage's path (tested against a real Label Studio, 1.23). The task's data also
  holds `path` (the image's absolute path, which reads the export back), the order to label
  in and the selection that chose it;
- the labeling config: an `Image` named `image` and single-choice `Choices` named `label`,
  one `Choice` per class;
- the JSON export: the tasks with `annotations`, each a `result` list whose `choices`
  result (`from_name` "label") holds the class; a cancelled (skipped) annotation, or a task
  with none, has no label. JSON-MIN and CSV exports flatten a task to its data fields and a
  `label` field (empty when there is none).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from transfer import lists, outputs
from transfer.errors import TransferError

IMAGE = "image"  # the data key and the Image tag's name
CHOICES = "label"  # the Choices tag's name: JSON-MIN and CSV exports name the label column by it
LOCAL_FILES = "/data/local-files/?d="
EXPORT_COLUMNS = ("annotation_id", "annotator", "lead_time")  # columns only a Label Studio CSV export has
TASKS = outputs.starting("Label Studio task file", b"[")
CONFIG = outputs.starting("Label Studio labeling config", b"<view")


def config(classes: list[str]) -> str:
    """The labeling config: the image, and one choice per class (single choice)."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}"/>\n'
            f'  <Choices name="{CHOICES}" toName="{IMAGE}" choice="single" showInline="true">\n{choices}\n'
            "  </Choices>\n</View>\n")


class Serving(NamedTuple):
    """Where Label Studio finds the images: its document root, and the path of the project's
    Local files storage (the deepest folder holding every image; the root is its parent)."""

    root: Path
    storage: Path


def serving(paths: list[str]) -> Serving:
    """The document root and the storage path that serve `paths`."""
    storage = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    return Serving(storage.parent, storage)


def tasks(paths: list[str], root: Path, how: str) -> list[dict]:
    """One task per image, in the order to label them."""
    out = []
    for k, p in enumerate(paths, start=1):
        below = Path(os.path.relpath(os.path.abspath(p), root)).as_posix()
        out.append({"data": {IMAGE: LOCAL_FILES + quote(below), "path": os.path.abspath(p), "order": k,
                             "chosen_by": how}})
    return out


def write(out: str | os.PathLike, paths: list[str], classes: list[str], how: str) -> tuple[Path, Path, Serving]:
    """The task file at `out` and the labeling config beside it (`.xml`); (tasks, config, where
    Label Studio serves the images from)."""
    if any(not os.path.isfile(p) for p in paths):
        raise TransferError("--format label-studio needs image files (Label Studio serves them); a built-in's "
                            "images are held in memory: use --format csv")
    where = serving(paths)
    out = Path(out)
    outputs.write_text(out, json.dumps(tasks(paths, where.root, how), indent=1) + "\n")
    xml = out.with_suffix(".xml")
    outputs.write_text(xml, config(classes))
    return out, xml, where


def is_export(path: str | os.PathLike) -> bool:
    """Is `path` a Label Studio export (JSON or JSON-MIN; a CSV with the columns only its exports have)?"""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return True
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    first = outputs.head(path).removeprefix(outputs.BOM).decode("utf-8", "replace").splitlines()[:1]
    header = [c.strip() for c in next(csv.reader(first), [])]  # quoted names too
    return any(c in header for c in EXPORT_COLUMNS)


def read(path: str | os.PathLike, what: str = "Label Studio export") -> tuple[list[Path], list[str], int]:
    """(image paths, their labels, how many tasks had no label: skipped or not yet labeled) of an export."""
    path = Path(path)
    if not path.exists():
        raise TransferError(f"{what} {path} not found")
    lists.check_regular(path, what)
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TransferError(f"{what} {path}: not a readable JSON file ({exc})") from None
        if not isinstance(records, list):
            raise TransferError(f"{what} {path}: expected a list of tasks (Label Studio's JSON or JSON-MIN export)")
        pairs = [_task(record, path, what) for record in records]
    else:
        table = lists.read(path, what, ("path",))
        if CHOICES not in table.columns:
            raise TransferError(f"{what} {path}: no '{CHOICES}' column: the labeling config's Choices must be "
                                f"named '{CHOICES}' (as select --format label-studio writes it)")
        pairs = [(row["path"], row[CHOICES]) for row in table.rows]
    labeled = [(lists.resolve(path, p), label) for p, label in pairs if label]
    missing = [str(p) for p, _ in labeled if not p.exists()]
    if missing:
        raise TransferError(f"{what} {path}: {len(missing)} task image(s) not found (first: {missing[0]}); the "
                            "tasks name the images select chose, by their absolute paths")
    return [p for p, _ in labeled], [label for _, label in labeled], len(pairs) - len(labeled)


def _task(record, path: Path, what: str) -> tuple[str, str]:
    """(image path, label or "") of one exported task (JSON: with annotations; JSON-MIN: flat)."""
    if not isinstance(record, dict):
        raise TransferError(f"{what} {path}: a task is not a JSON object")
    data = record.get("data", record)  # JSON-MIN flattens the data fields into the task
    where = data.get("path") if isinstance(data, dict) else None
    if not where:
        raise TransferError(f"{what} {path}: task {record.get('id', '?')} has no 'path' in its data (import the "
                            "tasks select --format label-studio wrote)")
    if "annotations" not in record:  # JSON-MIN: the label under the Choices' name
        label = record.get(CHOICES, "")
        return where, label if isinstance(label, str) else (label.get("choices", [""])[0] if label else "")
    for annotation in reversed(record["annotations"] or []):  # the latest kept annotation
        if annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result", []):
            if result.get("type") == "choices" and result.get("from_name", CHOICES) == CHOICES:
                chosen = result.get("value", {}).get("choices", [])
                if chosen:
                    return where, str(chosen[0])
    return where, ""
