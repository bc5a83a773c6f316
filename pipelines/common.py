"""What the pipelines share: one run lifecycle, and small steps."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import keras
import numpy as np

from transfer import (architectures, artifacts, board, config, data, distribute, outputs, results, stopping,
                      training, visualize)
from transfer.errors import TrainingDiverged, TransferError
from transfer.listing import report_skipped  # noqa: F401 (the pipelines' one line for skipped files)


class Run:
    """One training run's life, the same for pretrain and fine-tune.

    strategy -> chief or not -> staging directory `OUT.partial` (resumed when an
    interrupted run of the same configuration left it) -> training under the
    strategy -> non-chief workers stop -> model + manifest saved -> renamed to OUT
    -> one results row. Used as a context manager: a run that diverges leaves a
    `status=failed` row (with the fields given to `note`) and no staging; bad input
    leaves no staging; a lost worker leaves the chief's staging for a resume; any
    other failure keeps the staging too and marks the exception with it
    (`exc.staging`), where the CLI saves the traceback.
    """

    def __init__(self, command: str, cfg, out: str | None, log):
        """`out`: the run directory (None: runs/RUN_ID)."""
        self.command, self.cfg, self.log = command, cfg, log
        outputs.check(results.target(cfg.results), "--results")  # before any work, not after hours
        results.check_table(cfg.results)
        if cfg.tensorboard:
            outputs.writable_folder(cfg.tensorboard, f"--tensorboard {cfg.tensorboard} cannot be written")
        self.run_id = results.new_run_id(command)
        self.out = Path(out) if out else Path("runs") / self.run_id
        self.clock, self.attempts = results.Stopwatch(), 1  # with the processes this run resumes, if any
        self.strategy = distribute.make_strategy(cfg.strategy)
        self.chief = distribute.cluster()["chief"] if distribute.is_multiworker(self.strategy) else True
        with self.strategy.scope():  # the chief's --out is the run's on every worker (backups, barriers)
            chief_out = Path(distribute.chief_value("out", str(self.out)))
        if chief_out != self.out:
            log(f"this worker's --out {self.out} differs from the chief's; the chief's {chief_out} is the run's")
            self.out = chief_out
        self.facts = {"data": cfg.data, "seed": cfg.seed}  # row fields known so far
        self._lock = contextlib.ExitStack()
        self._temporary = contextlib.ExitStack()  # temporary files of the run, removed when it ends, however
        if self.chief:
            self._lock.enter_context(artifacts.run_lock(self.out))  # one process per run directory
            try:
                self.staging, resumed = artifacts.start_run_dir(self.out, cfg.overwrite, config_dict(cfg))
                if resumed:
                    log(f"resuming the interrupted run in {self.staging}")
                    earlier = _earlier_attempts(self.staging)
                    self.clock = results.Stopwatch(earlier["seconds"], earlier["cpu_seconds"])
                    self.attempts = earlier["attempts"] + 1
                outputs.write_json(self.staging / ELAPSED, self._elapsed())  # counted in, should it be killed
            except BaseException:
                self._lock.close()
                raise
        else:  # only the chief writes artifacts; a worker's files go to a scratch directory
            self._scratch = stopping.temporary_directory("transfer-worker-")
            self.staging = Path(self._scratch.name)
        distribute.barrier(f"staging:{self.out}")  # the chief's staging is settled before anyone reads it

    def backup_dir(self, name: str) -> Path:
        """Where training backups go: the chief's staging directory, which every worker
        restores from (on a shared file system) and only the chief writes."""
        return self.out.with_name(self.out.name + ".partial") / name

    def note(self, **fields) -> None:
        """Row fields known so far (a failed run's row records them)."""
        self.facts.update(fields)

    def __enter__(self) -> "Run":
        self._policy = keras.mixed_precision.global_policy()
        if self.cfg.precision == "mixed":  # bfloat16 needs no loss scaling (unlike float16)
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        return self

    def temporary(self, listing):
        """`listing` (from `stream.decode_once`), whose decoded-once file is removed when the run
        ends, finished, failed or stopped (not left to the garbage collector)."""
        if listing.store.folder is not None:
            self._temporary.callback(listing.store.folder.cleanup)
        return listing

    def __exit__(self, kind, exc, tb) -> bool:
        keras.mixed_precision.set_global_policy(self._policy)
        self._temporary.close()
        try:
            self._on_failure(exc)
        finally:
            if exc is not None:
                self._lock.close()  # after the failure's row: the run directory is free again
        return False

    def _on_failure(self, exc) -> None:
        if isinstance(exc, TrainingDiverged):
            shutil.rmtree(self.staging, ignore_errors=True)
            results.append_row(self.cfg.results, {**self._common(), "status": "failed", "error": str(exc)})
        elif isinstance(exc, TransferError):
            shutil.rmtree(self.staging, ignore_errors=True)
        elif isinstance(exc, (distribute.WorkerFailed, stopping.Stopped)) and not self.chief:
            shutil.rmtree(self.staging, ignore_errors=True)
        elif isinstance(exc, (Exception, stopping.Stopped)) and self.chief and self.staging.is_dir():
            exc.staging = self.staging  # kept: a stopped or failed run resumes from it, and adds this time to its own
            with contextlib.suppress(OSError):  # a full disk must not hide what stopped the run
                outputs.write_json(self.staging / ELAPSED, self._elapsed())

    @contextlib.contextmanager
    def distributed(self):
        """Build and train under the strategy; a lost peer becomes `WorkerFailed`."""
        with self.strategy.scope():
            try:
                yield
            except distribute.PEER_ERRORS as exc:
                raise distribute.WorkerFailed(f"distributed training failed: {distribute.describe(exc)}") from None

    def worker_done(self, message: str) -> bool:
        """True on a non-chief worker, whose part ends here (the chief saves and records)."""
        if self.chief:
            return False
        shutil.rmtree(self.staging, ignore_errors=True)
        self.log(f"worker finished{message}; the chief writes the run directory and the results row")
        return True

    def save(self, model, kind: str, image_size: int, channels: int, in_model: str | None = None,
             **manifest) -> Path:
        """Save the model and its manifest, then move the run directory into place (`in_model`:
        the preprocessing the model does itself, in words, for the manifest's contract).
        Call outside `distributed()`: reading mirrored variables there is a collective
        that the other workers, already finished, would never join."""
        filename = f"{kind}.keras"
        (self.staging / ELAPSED).unlink(missing_ok=True)  # in the row, not an artifact
        digest = artifacts.save_model(model, self.staging / filename)
        artifacts.write_manifest(self.staging, kind, run_id=self.run_id, model_file=filename, model_sha256=digest,
                                 image_size=image_size, channels=channels, in_model=in_model, **manifest)
        self.out = artifacts.finish_run_dir(self.staging, self.out)
        return self.out

    def board(self, phase: str):
        """The TensorBoard directory of one fit of this run (`--tensorboard`; None: none, or not the chief)."""
        return board.phase_dir(self.cfg.tensorboard, self.run_id, phase) if self.chief else None

    def keep(self, phase: str, history: str | None = None, backups: bool = True) -> training.Keep:
        """What the fit of `phase` keeps: its epochs in the staging directory's `history.csv`
        (the run's main phase, pretrain or train) or `history-PHASE.csv` (or `history`), backups
        in `backup[-PHASE]` to resume from, progress lines `PHASE epoch ...`, its TensorBoard
        folder; XLA as the run is configured."""
        suffix = "" if phase in ("pretrain", "train") else f"-{phase}"
        return training.Keep(history=self.staging / (history or f"history{suffix}.csv"),
                             backups=self.backup_dir(f"backup{suffix}") if backups else None, log=self.log,
                             prefix=f"{phase} ", tensorboard=self.board(phase), xla=self.cfg.xla)

    def record(self, **fields) -> dict:
        """Append the finished run's row (common fields + `fields`) and return it; with
        `--tensorboard`, also its HParams record."""
        row = {**self._common(), "status": "ok", **fields, "strategy": self.cfg.strategy,
               "precision": self.cfg.precision, "xla": self.cfg.xla,
               "replicas": self.strategy.num_replicas_in_sync, "workers": distribute.workers(self.strategy),
               **self._elapsed(), "peak_memory_mb": round(training.peak_memory_mb(), 1)}
        results.append_row(self.cfg.results, row)
        board.write_hparams(self.cfg.tensorboard, self.run_id, row)
        self._lock.close()  # the row is in: another process may now take the run directory
        return row

    def _elapsed(self) -> dict:
        """The run's processes so far (this one and those it resumes), their wall and CPU seconds."""
        return {"attempts": self.attempts, **self.clock.read()}

    def _common(self) -> dict:
        return results.row(self.command, self.cfg, self.run_id, **self.facts, run_dir=str(self.out))


ELAPSED = "elapsed.json"  # in OUT.partial: the processes that worked on the run so far, their seconds and CPU seconds


def _earlier_attempts(staging: Path) -> dict:
    """What the processes that worked on a resumed run spent (elapsed.json: each process counts
    itself in as it starts and adds its time as it stops or fails; one killed outright, by SIGKILL
    or a power cut, is counted, its time is not)."""
    try:
        earlier = json.loads((staging / ELAPSED).read_text(encoding="utf-8"))
        return {"attempts": int(earlier["attempts"]), "seconds": float(earlier["seconds"]),
                "cpu_seconds": float(earlier["cpu_seconds"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"attempts": 1, "seconds": 0.0, "cpu_seconds": 0.0}


def config_dict(cfg) -> dict:
    """The run's configuration as saved in config.json (and matched to resume a run): its options
    by their names (a section's flat, as the command line names them), with the fingerprint of
    the code that runs it."""
    d = {"command": type(cfg).__name__, **config.flat(cfg)}
    d.pop("overwrite", None)
    return {**d, "code": artifacts.code_fingerprint()}


def encoder_blocks(cfg) -> list[architectures.Block]:
    """The configured architecture's blocks; an image size too small for them is refused."""
    blocks = architectures.preset_blocks(cfg.arch, cfg.filters, **cfg.overrides())
    architectures.block_shapes(blocks, cfg.image_size, cfg.arch)
    return blocks


HOLDOUT_FRACTION = 0.1
HOLDOUT_MAX = 1024  # held-out images are kept in memory for metrics and previews


def holdout_split(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) split of unlabeled images by content id: 10%, at most 1,024."""
    if len(ids) < 2:
        raise TransferError(f"pretraining needs at least 2 images. Received: {len(ids)}")
    fraction = min(HOLDOUT_FRACTION, HOLDOUT_MAX / len(ids))
    return data.split_test(np.zeros(len(ids), dtype=np.int64), ids, fraction)


def save_preview(path: Path, originals: np.ndarray, reconstructions: np.ndarray) -> None:
    """A PNG with originals in the top row and their reconstructions (or views, samples) below."""
    tiles = [img if img.shape[-1] in (1, 3) else img[..., :3] for img in [*originals, *reconstructions]]
    visualize.save_png(visualize.tile(tiles, columns=len(originals)), path, min_px=512)
