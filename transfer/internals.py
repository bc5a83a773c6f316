"""Every use of Keras's and TensorFlow's private surfaces, fenced in this one module.

The rest of the toolkit uses public APIs only (`grep -rnE "keras\\.src|tensorflow\\.python|
_symbolic_build|_initial_epoch" transfer/ pipelines/` finds this file alone). What is here
has no public equivalent in the versions tested:

- the name a layer class is saved under (`keras.src.api_export`): the fused BatchNormalization
  (`transfer.layers`) is saved as the built-in `keras.layers.BatchNormalization`, so that every
  artifact loads in plain Keras; and giving loaded layers the fused arithmetic (`adopt_class`);
- the state of `keras.callbacks.BackupAndRestore` that `training.SafeBackupAndRestore` extends
  (its file paths, its epoch counter, its save, the epoch a restore starts from);
- Keras's patch of tf2onnx for numpy 2 (`patch_tf2onnx`), which ONNX export needs;
- the Keras 3 multi-worker workaround (keras-team/keras#20585: building a model from a local
  batch) and TensorFlow's coordination service (key-value store and its configuration),
  which `transfer.distribute` uses for barriers and deadlines.

Private surfaces move between releases, so `check_versions` refuses, with one line, a Keras or
TensorFlow outside the range this was tested on (`pyproject.toml` declares the same range);
`TRANSFER_UNTESTED_VERSIONS=1` runs anyway.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf
from keras.src import api_export
from tensorflow.python.eager import context

# The protobuf module the multi-worker strategy itself uses (its location moves between releases).
from tensorflow.python.distribute.collective_all_reduce_strategy import coordination_config_pb2

from transfer.errors import TransferError

# (first, last) minor versions tested; pyproject.toml's bounds are the same.
TESTED = {"keras": ((3, 12), (3, 15)), "tensorflow": ((2, 16), (2, 21))}
UNTESTED_ENV = "TRANSFER_UNTESTED_VERSIONS"


def _minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Refuse (TransferError, one line) a Keras or TensorFlow outside `TESTED`."""
    installed = installed or {"keras": keras.__version__, "tensorflow": tf.__version__}
    if os.environ.get(UNTESTED_ENV) == "1":
        return
    for name, version in installed.items():
        (lo, hi), got = TESTED[name], _minor(version)
        if not lo <= got <= hi:
            raise TransferError(
                f"{name} {version} is outside the versions transfer was tested with "
                f"({lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}); install one of those "
                f"(pip install '{name}>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1] + 1}') or set {UNTESTED_ENV}=1 to try anyway")


# --- saving a subclass under a built-in's public name ---------------------------------------

def save_as(cls: type, public_name: str) -> None:
    """Save instances of `cls` as `public_name` (a built-in whose config `cls` shares)."""
    api_export.REGISTERED_OBJS_TO_NAMES[cls] = public_name


def adopt_class(model: keras.Model, builtin: type, subclass: type) -> int:
    """Make every layer of `model` whose class is exactly `builtin` an instance of `subclass`
    (which adds no state); returns how many changed."""
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) is builtin:
            layer.__class__ = subclass
            changed += 1
    return changed


# --- keras.callbacks.BackupAndRestore's state -----------------------------------------------

def backup_files(callback: keras.callbacks.BackupAndRestore) -> tuple[str, str, str, str]:
    """(latest weights, latest metadata, previous weights, previous metadata) of `callback`."""
    return (callback._weights_path, callback._training_metadata_path,
            callback._prev_weights_path, callback._prev_training_metadata_path)


def write_backups_to(callback: keras.callbacks.BackupAndRestore, directory: str) -> None:
    """Make `callback` write its backups into `directory` (it keeps what it restored)."""
    callback.backup_dir = directory
    callback._weights_path = os.path.join(directory, "latest.weights.h5")
    callback._training_metadata_path = os.path.join(directory, "training_metadata.json")
    callback._prev_weights_path = f"{callback._weights_path}.bkp"
    callback._prev_training_metadata_path = f"{callback._training_metadata_path}.bkp"


def save_backup(callback: keras.callbacks.BackupAndRestore, epochs_done: int) -> None:
    """Back up now, as done after `epochs_done` epochs (the next fit starts there)."""
    callback._current_epoch, callback._last_batch_seen = epochs_done, 0
    callback._save_model()


def forget_restored(callback: keras.callbacks.BackupAndRestore) -> None:
    """Start from epoch 0: what was restored (if anything) is not to be continued."""
    callback._current_epoch = 0


def restored_epoch(model: keras.Model) -> int:
    """The epoch a fit of `model` starts from after BackupAndRestore restored it (0: none)."""
    return int(getattr(model, "_initial_epoch", 0) or 0)


def build_before_fit(model: keras.Model, sample_batch) -> None:
    """Build a compiled model's state (layers, metrics, loss trackers, optimizer) from a sample
    batch, as `fit` does under a distribution strategy. With none set, Keras defers it to the
    first trace of the train step, whose new variables make TensorFlow trace the step a second
    time: 0.7 s more on every small fine-tune (1.4 -> 0.6 s for a 2-epoch fit of 9 images)."""
    if getattr(model, "compiled", False):
        model._symbolic_build(data_batch=sample_batch)


# --- Keras 3 under MultiWorkerMirroredStrategy (keras-team/keras#20585) ---------------------

def build_from_local_batch(model: keras.Model, sample_batch) -> None:
    """Build `model` (and its optimizer) from a local batch, and stop `fit` from building it
    again from a distributed batch (which fails with several workers)."""
    if getattr(model, "compiled", False):  # an uncompiled model (predict only) has nothing more to build
        model._symbolic_build(data_batch=sample_batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None


# --- TensorFlow's coordination service --------------------------------------------------------

def coordination_configured() -> bool:
    return context.context().coordination_service is not None


def configure_coordination(jobs: dict[str, int], leader: str, register_ms: int, heartbeat_ms: int) -> None:
    """Configure the coordination service as MultiWorkerMirroredStrategy would, with deadlines."""
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=n) for job, n in jobs.items()],
        cluster_register_timeout_in_ms=register_ms, heartbeat_timeout_in_ms=heartbeat_ms)


def put(key: str, value: str) -> None:
    """Store `value` under `key` in the coordination service's key-value store."""
    context.context().set_config_key_value(key, value)


def get(key: str, timeout_ms: int) -> str:
    """The value under `key`, waiting at most `timeout_ms` (tf.errors.DeadlineExceededError)."""
    return context.context().get_config_key_value(key, timeout_ms)


# --- ONNX export -----------------------------------------------------------------------------


def patch_tf2onnx() -> None:
    """tf2onnx still reads numpy aliases numpy 2 removed; Keras's own ONNX export patches them
    first, and so does ours. A Keras without the patch goes with a tf2onnx that needs none."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx as patch
    except ImportError:
        return
    patch()
