"""Evaluate an encoder's features the standard way, beside raw pixels, a random encoder of the
same architecture and (an --arch encoder's) k-means filters; one results row per (features,
readout)."""

from __future__ import annotations

from pipelines.common import report_skipped
from transfer import artifacts, backbones, evaluation, features, kmeans, models, outputs, results, splits, training
from transfer.architectures import Block
from transfer.config import EvaluateConfig
from transfer.errors import TransferError


def run(cfg: EvaluateConfig, log=print) -> list[dict]:
    """Score pixels, a random encoder, k-means filters and `cfg.encoder` (each readout) by k-NN,
    linear probe and few-label 1-NN / probe on the test split; append and return the rows."""
    outputs.check(results.target(cfg.results), "--results")
    results.check_table(cfg.results)
    if backbones.is_backbone(cfg.encoder):  # built once the data's channels are known
        encoder, manifest = None, {"objective": backbones.objective(cfg.weights) or "random",
                                   "arch": {"preset": backbones.name_of(cfg.encoder), "init": cfg.encoder}}
        size, channels, opened = cfg.image_size, None, None
    else:
        opened = artifacts.open_run(cfg.encoder, "encoder")
        encoder, manifest, size, channels = opened.model, opened.manifest, opened.image_size, opened.channels
    found = splits.open_labeled(cfg.data, cfg.test_data, cfg.test_fraction, size, channels, log)
    channels = found.source.channels
    if encoder is None:
        encoder = backbones.build(cfg.encoder, cfg.weights, size, channels)
    n_classes = len(found.source.class_names)
    candidates, projector = _candidates(cfg, opened, manifest, encoder, size, found)
    log(f"evaluating {cfg.encoder} on {cfg.data}: {len(found.pool)} pool images (every label for k-NN and the "
        f"probe, {'/'.join(map(str, evaluation.BUDGETS))} per class for the few-label scores, {cfg.draws} draws), "
        f"{len(found.test_index)} test images")
    rows, reference, correct = [], None, {}
    for role, method, model, readout in candidates:
        clock = results.Stopwatch()
        net = None if model is None else models.build_features(model, readout, True, projector)
        pool_f, pool_y, _ = features.compute(net, found.pool_set(size))
        test_f, test_y, _ = features.compute(net, found.test_set(size))
        if len(pool_f) == 0 or len(test_f) == 0:
            raise TransferError(f"{cfg.data}: no readable images to evaluate on")
        correct[role, readout] = evaluation.knn_hits(pool_f, pool_y, test_f, test_y, n_classes)
        got = evaluation.scores(pool_f, pool_y, test_f, test_y, n_classes, draws=cfg.draws, seed=cfg.seed,
                                hits=correct[role, readout])
        got["rankme"] = evaluation.rankme(pool_f)  # label-free: the features' effective rank
        reference = reference or got
        baselines = {b: float(correct[b, readout].mean()) for b in BASELINES
                     if role == "encoder" and (b, readout) in correct}
        rows.append(_row(cfg, manifest, method, readout, got, reference, len(pool_f), len(test_f), pool_f.shape[1],
                         clock.read(), baselines))
    report_skipped(found.source.failed + (found.test_source.failed if found.test_source is not found.source else []),
                   log, "while decoding")
    for row in rows:
        results.append_row(cfg.results, row)
    log(table(rows))
    for line in verdicts(correct, manifest["objective"]):
        log(line)
    return rows


def _candidates(cfg: EvaluateConfig, opened, manifest: dict, encoder, size: int, found):
    """([(role, method, model, readout)] to score: pixels, the random encoder and (an --arch
    encoder not itself k-means) the k-means encoder of each readout (not the projector: they
    have no head), the encoder of each readout; the projection head of the `opened` run when the
    projector readout is asked, else None). `opened`: None for a keras:NAME backbone."""
    candidates, channels = [("pixels", "pixels", None, "pixels")], found.source.channels
    if cfg.baselines:
        training.set_seed(cfg.seed)
        candidates += [("random", "random", _random(manifest, size, channels), r)
                       for r in cfg.readouts if r != "projector"]
        if not manifest["arch"].get("init") and manifest["objective"] != "kmeans":
            filtered = _kmeans(manifest, size, found, cfg.seed)
            candidates += [("kmeans", KMEANS_METHOD, filtered, r) for r in cfg.readouts if r != "projector"]
    projector = opened.projector() if "projector" in cfg.readouts and opened is not None else None
    if "projector" in cfg.readouts and projector is None and cfg.readouts != EvaluateConfig.readouts:
        raise TransferError(f"readout projector: {cfg.encoder} has no projection head (a two-view objective's)")
    candidates += [("encoder", manifest["objective"], encoder, r) for r in cfg.readouts
                   if r != "projector" or projector is not None]
    return candidates, projector


KMEANS_METHOD = "kmeans-filters"  # the k-means baseline's rows (an encoder pretrained by k-means alone: "kmeans")
BASELINES = {"random": ("a random encoder's", "a random encoder of the same architecture"),
             "kmeans": ("k-means filters'", "the same architecture with k-means filters (seconds, no labels)")}


def verdicts(correct: dict, objective: str) -> list[str]:
    """One line per readout and baseline (the random encoder, the k-means filters) scored with
    the encoder: are the encoder's features better at 20-NN on the test images (a paired 95%
    interval above zero), or, in a warning, not?"""
    lines = []
    for (role, readout), mine in correct.items():
        for baseline, (whose, what) in BASELINES.items():
            other = correct.get((baseline, readout))
            if role != "encoder" or other is None:
                continue
            mean, low, high = evaluation.paired_difference(mine, other)
            scores = (f"20-NN {100 * mine.mean():.1f}% against {100 * other.mean():.1f}% for {what} on {len(mine)} "
                      f"test images; {mean:+.1f} points [95% CI {low:+.1f}, {high:+.1f}]")
            if low > 0:
                lines.append(f"{objective} features ({readout} readout) are better than {whose}: {scores}")
            else:
                lines.append(f"warning: {objective} features ({readout} readout) are no better than {whose}: {scores}")
    return lines


def _random(manifest: dict, size: int, channels: int):
    """A random encoder of the same architecture: the preset's blocks, or the backbone (a keras:NAME
    encoder's, or the one a pretraining continued from) with random weights."""
    init = manifest["arch"].get("init")
    if init:
        return backbones.build(init, "none", size, channels)
    blocks = [Block(**b) for b in manifest["arch"]["blocks"]]
    return models.build_encoder((size, size, channels), blocks, manifest["arch"]["preset"])


def _kmeans(manifest: dict, size: int, found, seed: int):
    """The encoder's architecture with k-means filters (`transfer.kmeans`) fitted on up to
    kmeans.IMAGES of the pool's images (never the test split's; no label read)."""
    encoder = _random(manifest, size, found.source.channels)
    kmeans.start(encoder, kmeans.sample(found.pool_set(size), seed), seed)
    return encoder


def _row(cfg, manifest, method, readout, got, reference, n_pool, n_test, dim, elapsed, baselines: dict) -> dict:
    """The row; `baselines`: {baseline: its k-NN accuracy with the same readout} (the encoder's
    rows: its error as a ratio of each, `knn_error_vs_random`, `knn_error_vs_kmeans`)."""
    return results.row("evaluate", cfg, test_data=cfg.test_data, encoder=cfg.encoder, objective=manifest["objective"],
                       method=method, arch=manifest["arch"]["preset"], readout=None if method == "pixels" else readout,
                       n_train=n_pool, n_test=n_test, feature_dim=dim,
                       **{f"{k}_accuracy" if k in ("knn", "probe") else k: round(v, 5) for k, v in got.items()},
                       knn_error_vs_pixels=round(evaluation.error_ratio(got["knn"], reference["knn"]), 4),
                       probe_error_vs_pixels=round(evaluation.error_ratio(got["probe"], reference["probe"]), 4),
                       **{f"knn_error_vs_{b}": round(evaluation.error_ratio(got["knn"], baselines[b]), 4)
                          if b in baselines else None for b in BASELINES},
                       **elapsed)


def table(rows: list[dict]) -> str:
    """The rows as people read them: accuracies in %, error ratios to pixels."""
    head = ["features", "readout", "dim", "RankMe", "20-NN", "probe", "k-NN err vs pixels"] + [
        f"1-NN@{b}" for b in evaluation.BUDGETS] + [f"probe@{b}" for b in evaluation.BUDGETS]
    lines = [head]
    for r in rows:
        lines.append([r["method"], r["readout"] or "", str(r["feature_dim"]), f"{r['rankme']:.1f}",
                      f"{100 * r['knn_accuracy']:.1f}",
                      f"{100 * r['probe_accuracy']:.1f}", f"{r['knn_error_vs_pixels']:.2f}x"]
                     + [f"{100 * r[f'nn1_{b}']:.1f} ± {100 * r[f'nn1_{b}_std']:.1f}" for b in evaluation.BUDGETS]
                     + [f"{100 * r[f'probe_{b}']:.1f}" for b in evaluation.BUDGETS])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)
