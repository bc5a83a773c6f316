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

from pathlib import Path

import numpy as np

from pipelines.common import report_skipped
from transfer import backbones, budget, evaluation, features, outputs, splits, stream
from transfer.config import EmbedConfig
from transfer.errors import TransferError

BLOCK = 1024  # rows of the similarity matrix held at once


def run(cfg: EmbedConfig, log=print) -> dict:
    out = Path(cfg.out)
    paths = {"npy": out, "csv": out.with_suffix(".csv"), "duplicates": out.with_name(out.stem + "-duplicates.csv")}
    kinds = {"npy": outputs.NPY, "csv": outputs.csv_with("row", "path", "id", "label"),
             "duplicates": outputs.csv_with("path_a", "path_b", "distance")}
    written = {k: p for k, p in paths.items() if k != "duplicates" or cfg.duplicates is not None}
    outputs.distinct({f"--out ({k})": p for k, p in written.items()}, {"--data": cfg.data})
    for key, path in written.items():
        outputs.check(path, "--out", kinds[key], cfg.overwrite)
    backbone = backbones.is_backbone(cfg.encoder)  # built once the images' channels are known
    net, size, channels, objective, readout = budget.feature_model(
        "pixels" if backbone else cfg.encoder, cfg.readout, cfg.channels)
    size = size or cfg.image_size
    source, _ = splits.open_pool(cfg.data, cfg.labeled, size, channels or cfg.channels, log)  # every image
    if backbone:
        net, size, channels, objective, readout = budget.feature_model(cfg.encoder, cfg.readout, source.channels,
                                                                       cfg.weights, size)
    log(f"embedding {len(source)} images of {cfg.data} with {cfg.encoder}"
        + ("" if net is None else f" ({objective}, readout {readout})"))
    f, y, positions = features.compute(net, stream.ImageSet.of(source, image_size=size))
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
    outputs.write_npy(paths["npy"], f.astype(np.float32))
    outputs.write_csv(paths["csv"], list(columns), zip(*columns.values()))
    pairs = duplicates(f, cfg.duplicates) if cfg.duplicates is not None else []
    if cfg.duplicates is not None:
        outputs.write_csv(paths["duplicates"], ["path_a", "path_b", "distance"],
                            [(names[a], names[b], f"{d:.4f}") for a, b, d in pairs])
    log(f"{len(f)} x {f.shape[1]} features -> {paths['npy']} (images: {paths['csv']})"
        + (f"; {len(pairs)} pairs closer than {cfg.duplicates} -> {paths['duplicates']}"
           if cfg.duplicates is not None else ""))
    return {"images": len(f), "dim": int(f.shape[1]), "duplicates": len(pairs)}


def neighbours(f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by cosine distance (1 - cosine similarity), nearest first."""
    z = evaluation.normalized(f)
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
    z = evaluation.normalized(f)
    pairs = []
    for start in range(0, len(z), BLOCK):
        sim = z[start:start + BLOCK] @ z.T
        rows, cols = np.nonzero(1.0 - sim < threshold)
        keep = cols > rows + start
        pairs += [(int(a + start), int(b), float(1.0 - sim[a, b])) for a, b in zip(rows[keep], cols[keep])]
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))
