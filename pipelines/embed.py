"""`transfer embed`: the features of every image of a source, with its path, content id and
label, streamed in batches; optionally each image's nearest neighbours and the pairs of
near-duplicates (the same images twice, or a test image that also sits in the pool).

Writes FILE.npy (float32, one row per image, in the CSV's order) and FILE.csv beside it
(`row,path,id,label`, with `neighbors` and `distances` when asked: `;`-separated paths and
cosine distances, nearest first), and FILE-duplicates.csv with `--duplicates D` (every pair
whose cosine distance is below D, closest first). The feature pass is the one `select`,
`evaluate` and the online probe use (`transfer.features`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipelines.common import report_skipped
from transfer import artifacts, budget, builtins, features, splits, stream
from transfer.config import EmbedConfig
from transfer.data import DEFAULT_TEST_FRACTION
from transfer.errors import TransferError

BLOCK = 1024  # rows of the similarity matrix held at once


def run(cfg: EmbedConfig, log=print) -> dict:
    out = Path(cfg.out)
    paths = {"npy": out, "csv": out.with_suffix(".csv"), "duplicates": out.with_name(out.stem + "-duplicates.csv")}
    for path in paths.values():
        artifacts.check_writable(path, "--out")
    net, size, channels, objective = budget.feature_model(cfg.encoder, cfg.readout)
    size, channels = size or cfg.image_size, channels or cfg.channels
    if cfg.labeled or builtins.is_builtin(cfg.data):
        found = splits.open_labeled(cfg.data, None, DEFAULT_TEST_FRACTION, size, channels, log)
        source = found.source
    else:
        source = stream.open_source(cfg.data, False, size, channels)
        report_skipped(source.skipped, log)
    log(f"embedding {len(source)} images of {cfg.data} with {cfg.encoder}"
        + ("" if net is None else f" ({objective}, readout {cfg.readout})"))
    f, y, positions = features.compute(net, source, np.arange(len(source)), size)
    report_skipped(source.failed, log, "while decoding")
    if len(f) == 0:
        raise TransferError(f"{cfg.data}: no readable images to embed")
    names = [source.name(i) for i in positions]
    columns = {"row": list(range(len(f))), "path": names, "id": list(source.ids[positions]),
               "label": [source.class_names[c] if c >= 0 else "" for c in y]}
    if cfg.neighbors:
        nearest, distance = neighbours(f, cfg.neighbors)
        columns["neighbors"] = [";".join(names[j] for j in row) for row in nearest]
        columns["distances"] = [";".join(f"{d:.4f}" for d in row) for row in distance]
    np.save(paths["npy"], f.astype(np.float32), allow_pickle=False)
    _write_csv(paths["csv"], columns)
    pairs = duplicates(f, cfg.duplicates) if cfg.duplicates is not None else []
    if cfg.duplicates is not None:
        _write_csv(paths["duplicates"], {"path_a": [names[a] for a, _, _ in pairs],
                                         "path_b": [names[b] for _, b, _ in pairs],
                                         "distance": [f"{d:.4f}" for _, _, d in pairs]})
    log(f"{len(f)} x {f.shape[1]} features -> {paths['npy']} (images: {paths['csv']})"
        + (f"; {len(pairs)} pairs closer than {cfg.duplicates} -> {paths['duplicates']}"
           if cfg.duplicates is not None else ""))
    return {"images": len(f), "dim": int(f.shape[1]), "duplicates": len(pairs)}


def _normalized(f: np.ndarray) -> np.ndarray:
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)


def neighbours(f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by cosine distance (1 - cosine similarity), nearest first."""
    z = _normalized(f)
    k = min(k, len(z) - 1)
    nearest = np.zeros((len(z), max(k, 0)), np.int64)
    distance = np.zeros((len(z), max(k, 0)), np.float32)
    for start in range(0, len(z), BLOCK):
        sim = z[start:start + BLOCK] @ z.T
        sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf  # not itself
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k else np.zeros((len(sim), 0), np.int64)
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        nearest[start:start + len(sim)] = np.take_along_axis(top, order, axis=1)
        distance[start:start + len(sim)] = 1.0 - np.take_along_axis(sim, nearest[start:start + len(sim)], axis=1)
    return nearest, distance


def duplicates(f: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(a, b, cosine distance) of every pair a < b closer than `threshold`, closest first."""
    z = _normalized(f)
    pairs = []
    for start in range(0, len(z), BLOCK):
        sim = z[start:start + BLOCK] @ z.T
        rows, cols = np.nonzero(1.0 - sim < threshold)
        keep = cols > rows + start
        pairs += [(int(a + start), int(b), float(1.0 - sim[a, b])) for a, b in zip(rows[keep], cols[keep])]
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def _write_csv(path: Path, columns: dict) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values()))
    artifacts.write_text(path, text.getvalue())
