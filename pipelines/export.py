"""`transfer export RUN --format savedmodel|onnx|litert`: a fine-tuned classifier (or a
pretrained encoder) in a deployment format, checked against the Keras model on 64 of the
run's test images before it counts, with a manifest that says what to feed it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transfer import artifacts, export, outputs, splits, stream
from transfer.config import ExportConfig
from transfer.data import DEFAULT_TEST_FRACTION
from transfer.errors import TransferError

CHECK_IMAGES = 64


def run(cfg: ExportConfig, log=print) -> dict:
    export.check_runtime(cfg.format)  # a missing runtime is refused before anything loads
    kind = _kind(cfg.run_dir)
    out = Path(cfg.out) if cfg.out else Path(cfg.run_dir) / "export" / f"model{export.SUFFIX[cfg.format]}"
    record = out.with_name(out.name + ".json")
    _check_target(cfg, out, record)
    run = artifacts.open_run(cfg.run_dir, kind)
    images, where = _check_images(run)
    diff = export.export(run.model, cfg.format, out, images)
    size, channels = run.image_size, run.channels
    text = {"format": cfg.format, "model": str(out), "source_run": str(cfg.run_dir), "kind": kind,
            "input": {"name": run.model.inputs[0].name, "shape": [None, size, size, channels], "dtype": "float32",
                      "what": "images decoded, converted and resized as `preprocessing` says, scaled to [0, 1]: "
                              "exactly what `transfer predict` feeds the model (the export does not decode files)",
                      "preprocessing": run.preprocessing},
            "output": ("class probabilities (softmax), one per class of class_names, in that order"
                       if kind == "classifier" else "the encoder's last feature maps"),
            "class_names": run.class_names,
            "check": {"images": len(images), "on": where, "max_abs_difference": diff,
                      "tolerance": export.TOLERANCE}}
    outputs.write_text(record, json.dumps(text, indent=2) + "\n")
    log(f"exported the {kind} of {cfg.run_dir} to {cfg.format}: {out} (outputs within {diff:.1e} of the Keras "
        f"model on {len(images)} {where}); what to feed it: {record}")
    return text


RECORD_KEYS = ("format", "model", "source_run", "check")
RECORD = outputs.json_with("export record (OUT.json)", *RECORD_KEYS)


def _check_target(cfg: ExportConfig, out: Path, record: Path) -> None:
    """Before anything loads: OUT and OUT.json may be written. An existing OUT is replaced only
    with --overwrite and when it is an export this tool made (OUT.json, its record, beside it
    names it): never a folder or file of the user's, never the run directory itself."""
    run = Path(cfg.run_dir).resolve()
    if out.resolve() == run or out.resolve() in run.parents:
        raise TransferError(f"--out {out} is the run directory {cfg.run_dir} or holds it; choose another path")
    outputs.check(record, "--out", RECORD, cfg.overwrite)
    if out.exists() or out.is_symlink():
        if not cfg.overwrite:
            raise TransferError(f"{out} already exists; pass --overwrite to replace it")
        made = outputs.json_record(record, RECORD_KEYS)  # read once: it names the export it records
        if made is None or Path(str(made["model"])).name != out.name or out.is_symlink():
            raise TransferError(f"--out {out} exists and is not an export made by transfer (no {record.name} beside "
                                "it naming it); it is never replaced: move it away or choose another path")


def _kind(run_dir: str) -> str:
    try:
        artifacts.read_manifest(run_dir, "classifier")
        return "classifier"
    except TransferError:
        artifacts.read_manifest(run_dir, "encoder")  # refuses anything else, with its reason
        return "encoder"


def _check_images(run: artifacts.OpenedRun) -> tuple[np.ndarray, str]:
    """Up to CHECK_IMAGES images of the run's test split (its data, as the manifest names it), else
    of the data, else uniform noise when the data is not readable here."""
    size, channels, src = run.image_size, run.channels, run.source
    quiet = lambda message: None  # noqa: E731
    if src:
        try:
            found = splits.open_labeled(src, None, DEFAULT_TEST_FRACTION, size, channels, quiet)
            images = stream.load(found.test_source, found.test_index[:CHECK_IMAGES], size).images
            return images.astype(np.float32), f"test images of {src}"
        except TransferError:  # no labels, or none readable here
            pass
    try:
        source = stream.open_for_prediction(src, size, channels) if src else None
        if source is None or len(source) == 0:
            raise TransferError("no images")
        return stream.load(source, np.arange(min(CHECK_IMAGES, len(source))), size).images, f"images of {src}"
    except TransferError:
        noise = np.random.default_rng(0).random((CHECK_IMAGES, size, size, channels)).astype(np.float32)
        return noise, "uniform noise images (the run's data is not readable here)"
