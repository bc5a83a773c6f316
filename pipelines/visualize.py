"""`transfer visualize`: the report of what an encoder learned (`transfer.visualize.write_report`)
for a run directory, with a sample image from its pretraining data or --image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transfer import artifacts, data, lists, outputs, stream
from transfer import visualize as vis
from transfer.config import VisualizeConfig
from transfer.errors import TransferError


def _sample_image(cfg: VisualizeConfig, run: artifacts.OpenedRun) -> np.ndarray | None:
    size, channels = run.image_size, run.channels
    if cfg.image:
        return data.decode_image(cfg.image, size, channels)
    try:
        return stream.load(stream.open_for_prediction(run.source, size, channels), [0], size).images[0]
    except TransferError:
        return None  # the pretraining data moved; feature maps need --image then


def run(cfg: VisualizeConfig, log=print) -> Path:
    run = artifacts.open_run(cfg.run_dir, "encoder")  # a run that is one, before its folder
    out = Path(cfg.out) if cfg.out else Path(cfg.run_dir) / "visualize"
    if out.exists() and not out.is_dir():
        raise TransferError(f"--out {out} is a file; visualize writes a folder")
    for name, kind in vis.REPORT_FILES.items():  # each replaced only if it is a report's own file
        outputs.check(out / name, "--out", kind)
    if cfg.image:
        lists.check_regular(cfg.image, "--image")
    image = _sample_image(cfg, run)
    if image is None:
        log("feature maps skipped: the pretraining data is not readable here; pass --image")
    page = vis.write_report(run.model, out, image=image, layer=cfg.layer, units=cfg.units, run_dir=Path(cfg.run_dir),
                        title=f"{run.objective} encoder, {run.manifest['arch']['preset']} "
                              f"({Path(cfg.run_dir).name})")
    log(f"wrote {page}")
    return page
