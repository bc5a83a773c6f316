"""Run directories: save and load models with their manifests, safely.

A run directory is built under `<out>.partial` and renamed into place only
when complete, so `<out>` is either a whole run (model, manifest, history,
config) or absent. `manifest.json` records the SHA-256 of the model file;
loading checks it and uses Keras's `safe_mode=True`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import __version__, data, outputs, results, stopping
from transfer.errors import RunComplete, TransferError

MANIFEST = "manifest.json"
FORMAT = "transfer-run"
FORMAT_VERSION = 1


# The manifest schema: what every run directory's manifest.json holds, beside the common fields.
MANIFEST_FIELDS = {
    # projector: {"file", "sha256"} of the two-view objectives' projection head, saved beside the
    # encoder (the `projector` readout), or None; start: the weights the objective started from,
    # "random", "kmeans" (`pretrain --start`) or the --init backbone (absent from manifests
    # written before it: random or the backbone)
    "encoder": {"arch", "objective", "start", "data", "metrics", "projector"},
    "classifier": {"class_names", "encoder", "method", "freeze", "readout", "data", "metrics"},
}


def write_manifest(run_dir: Path, kind: str, *, run_id: str, model_file: str, model_sha256: str,
                   image_size: int, channels: int, in_model: str | None = None, **fields) -> dict:
    """Write `run_dir/manifest.json` for a run of `kind`; returns it.

    Common fields: format, kind, run id, creation time, the model file and its SHA-256,
    the input shape and the preprocessing contract (`transfer.data`; `in_model`: what the model
    does to its input itself, e.g. an ImageNet backbone's scaling), library versions.
    `fields` must be exactly `MANIFEST_FIELDS[kind]`.
    """
    expected = MANIFEST_FIELDS[kind]
    if set(fields) != expected:
        raise ValueError(f"a {kind} manifest takes {sorted(expected)}; got {sorted(fields)}")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "run_id": run_id, "created": results.now(),
        "model_file": model_file, "model_sha256": model_sha256,
        "input_shape": [int(image_size), int(image_size), int(channels)],
        "preprocessing": data.preprocessing_contract(image_size, channels, in_model),
        **fields, "versions": versions(),
    }
    outputs.write_json(Path(run_dir) / MANIFEST, manifest)
    return manifest


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of this installation's own source (the transfer and pipelines packages and
    cli.py): saved in config.json, so an interrupted run is resumed only by the code that
    began it (the version string does not change between builds, and a changed default or
    step would otherwise continue under another meaning)."""
    root = Path(__file__).resolve().parent.parent
    files = [f for package in ("transfer", "pipelines") for f in (root / package).rglob("*.py")]
    h = hashlib.sha256()
    for path in sorted(files + [root / "cli.py"]):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def versions() -> dict:
    import keras
    import tensorflow as tf

    return {"transfer": __version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


class RunBusy(TransferError):
    """Another process is writing this run directory."""


_held: dict[str, list] = {}  # lock path -> [fd, depth]: the run locks this process holds


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, wait: bool = False, on_wait=None):
    """Hold `<out>.lock` (an advisory lock next to `<out>.partial`): a run directory belongs
    to one process at a time. Re-entrant within a process. Without `wait`, a directory
    another process holds is refused (`RunBusy`); with it, `on_wait` is told once and the
    lock is waited for. Released when the block ends, or when the process dies."""
    path = os.path.abspath(f"{out}.lock")
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    fd = _acquire(path, wait, on_wait, out)
    _held[path] = [fd, 1]
    try:
        yield
    finally:
        del _held[path]
        with stopping.critical():
            try:
                os.unlink(path)  # while still held: a waiter that opened it retries on the new file
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _acquire(path: str, wait: bool, on_wait, out) -> int:
    outputs.writable_folder(Path(path).parent, f"run directory {out} cannot be created")
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                os.close(fd)
                raise RunBusy(f"run directory {out} is being written by another process (pid {holder}); "
                              "wait for it to finish, or choose another --out") from None
            if on_wait is not None and not told:
                on_wait(f"waiting for another process (pid {holder}) to finish {out}")
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed while we waited
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)


def start_run_dir(out: str | os.PathLike, overwrite: bool, config: dict | None = None) -> tuple[Path, bool]:
    """Check that `out` may be written; return (staging directory, resumed).

    The staging directory `<out>.partial` is kept, and the run resumed, when
    it was left by an interrupted run of the same configuration (its
    `config.json` equals `config`), with or without `overwrite` (which is about
    a finished `out`: an experiment's fine-tunes pass it, and resume their own
    interrupted runs); otherwise it starts empty. `config` is written there
    first, so an interrupted run can always be matched.

    Raises:
        RunComplete: `out` is a finished run and overwrite is False.
        TransferError: `out` exists and is neither a finished run nor an empty folder (with
            `overwrite` too: it replaces only a run directory the tool made).
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir():
            raise TransferError(f"{out} exists and is not a directory; choose another --out")
        if is_run_dir(out):
            if not overwrite:
                raise RunComplete(f"run directory {out} is complete; pass --overwrite to start it over")
        elif any(out.iterdir()):  # --overwrite replaces only what the tool made
            raise TransferError(f"{out} exists and is not a run directory (no {MANIFEST} of a transfer run); it is "
                                "never replaced, --overwrite or not: choose another --out")
    staging = out.with_name(out.name + ".partial")
    outputs.writable_folder(staging.parent, f"run directory {out} cannot be created")
    resumed = False
    if staging.exists():
        try:
            resumed = config is not None and json.loads(
                (staging / "config.json").read_text(encoding="utf-8")) == json.loads(
                json.dumps(config, default=outputs.json_default))
        except (OSError, ValueError):
            resumed = False
        if not resumed:
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    if config is not None:
        outputs.write_json(staging / "config.json", config)
    return staging, resumed


def is_run_dir(path: str | os.PathLike) -> bool:
    """A folder holding the manifest of a transfer run (what `--overwrite` may replace)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def finish_run_dir(staging: Path, out: str | os.PathLike) -> Path:
    """Move a complete staging directory into place, replacing an old `out` last."""
    out = Path(out)
    old = None
    with stopping.critical():  # a stop signal waits until the run directory is in place
        if out.exists():
            old = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def save_model(model, path: str | os.PathLike) -> str:
    """Save a Keras model atomically; returns the file's SHA-256."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.keras")
    with stopping.critical():
        model.save(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    return digest


def read_manifest(run_dir: str | os.PathLike, kind: str) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise TransferError(f"{kind} run directory not found: {run_dir}")
    path = run_dir / MANIFEST
    if not path.is_file():
        raise TransferError(f"{run_dir} has no {MANIFEST}; it is not a complete {kind} run directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TransferError(f"{path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("kind") != kind:
        raise TransferError(f"{run_dir} is not a {kind} run directory (its manifest says kind={manifest.get('kind')!r})")
    return manifest


def load_model_run(run_dir: str | os.PathLike, kind: str):
    """Load (model, manifest) from a run directory written by `save_model` + manifest.

    Raises:
        TransferError: missing/invalid manifest, checksum mismatch, not a Keras
            archive, or a model that safe_mode refuses.
    """
    manifest = read_manifest(run_dir, kind)
    return _load_checked(run_dir, manifest.get("model_file", ""), manifest.get("model_sha256")), manifest


@dataclass(frozen=True)
class OpenedRun:
    """A finished run directory, opened by every command that reads one (fine-tune, select,
    evaluate, embed, export, predict, visualize): its model, checked against the manifest's
    SHA-256 and loaded safely, its manifest, and what the manifest promises a reader."""

    path: Path
    kind: str  # "encoder" or "classifier"
    model: object
    manifest: dict

    @property
    def preprocessing(self) -> dict:
        """How images are decoded, converted and resized for the model (the contract `predict` and exports keep)."""
        return self.manifest["preprocessing"]

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    @property
    def channels(self) -> int:
        return int(self.preprocessing["channels"])

    @property
    def objective(self) -> str | None:
        return self.manifest.get("objective")

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.get("class_names")

    @property
    def source(self) -> str | None:
        """The data the run learned from, as it was given (None when not recorded)."""
        return (self.manifest.get("data") or {}).get("source")

    def projector(self):
        """The projection head a two-view objective saved beside the encoder, checked as the
        encoder is; None when there is none."""
        return load_projector(self.path, self.manifest)

    def serves(self, channels: int | None, option: str = "--channels") -> None:
        """Refuse images of other `channels` than the model's (None: not asked)."""
        if channels is not None and int(channels) != self.channels:
            raise TransferError(f"the {self.kind} takes {self.channels}-channel images; {option} {channels} cannot "
                                "serve it")


def open_run(run_dir: str | os.PathLike, kind: str) -> OpenedRun:
    """The run directory of `kind`, opened (`OpenedRun`); a missing, damaged, changed or unsafe
    one is refused with its reason (`load_model_run`)."""
    model, manifest = load_model_run(run_dir, kind)
    return OpenedRun(Path(run_dir), kind, model, manifest)


def load_projector(run_dir: str | os.PathLike, manifest: dict):
    """The projection head saved beside an encoder by a two-view objective, or None (other
    objectives, and encoders saved before it was kept), checked as the encoder is."""
    entry = manifest.get("projector")
    if not entry:
        return None
    return _load_checked(run_dir, entry.get("file", ""), entry.get("sha256"))


def _load_checked(run_dir, filename, expected: str | None):
    """A .keras file of the run directory, after its name, SHA-256 and archive are checked, loaded safely."""
    import keras

    filename = str(filename)
    if Path(filename).name != filename or filename in ("", ".", ".."):
        raise TransferError(f"{run_dir}: the manifest's model file {filename!r} must be a file name inside the run "
                            "directory")
    if not filename.endswith(".keras"):
        raise TransferError(f"{run_dir}: {filename!r} is not a .keras file; legacy formats (.h5, SavedModel) are "
                            "refused")
    path = Path(run_dir) / filename
    if not path.is_file():
        raise TransferError(f"{run_dir}: model file {filename!r} named by the manifest is missing")
    if sha256_file(path) != expected:
        raise TransferError(f"{path}: SHA-256 does not match the manifest; the file was changed or damaged")
    if not zipfile.is_zipfile(path):
        raise TransferError(f"{path} is not a Keras .keras archive")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TransferError(f"{path}: cannot be loaded safely ({reason})") from None


def save_pretrain_ids(run_dir: Path, ids: np.ndarray) -> None:
    """Content ids of the pretraining images, as sorted uint64, to detect test leakage later."""
    np.save(run_dir / "pretrain_ids.npy", np.sort(np.array([int(i, 16) for i in ids], dtype=np.uint64)))


def count_leaked(run_dir: str | os.PathLike, ids: np.ndarray) -> int | None:
    """How many of `ids` were among an encoder's pretraining images (None if unknown)."""
    path = Path(run_dir) / "pretrain_ids.npy"
    if not path.is_file():
        return None
    seen = np.load(path, allow_pickle=False)
    probe = np.array([int(i, 16) for i in ids], dtype=np.uint64)
    return int(np.isin(probe, seen).sum())
