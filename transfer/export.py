"""Models out of Keras, for deployment: Keras's own `Model.export` (ONNX: tf2onnx on the frozen graph), checked.

Formats: `savedmodel` (TensorFlow SavedModel, a folder; serve with TF Serving or
`tf.saved_model.load(PATH).serve(x)`), `onnx` (one .onnx file; onnxruntime and other
runtimes) and `litert` (one .tflite file; LiteRT / TensorFlow Lite on phones and devices).
ONNX needs `tf2onnx` and `onnxruntime`, LiteRT `ai-edge-litert` (`pip install -e ".[export]"`).

ONNX is converted here, not by `Model.export(format="onnx")`: that route (tf2onnx's
`from_function`) lists every tensor the traced function captures as a graph input, and a
Keras layer holding fixed constants (the probe's `Normalization`, built with the training
features' mean and variance) is captured as tensors, so the ONNX model asked for them as
inputs and could not run. Here the traced function is frozen with the model's real input
only (the captured constants become constants), then converted by tf2onnx's
`from_graph_def`; the ONNX input keeps the Keras input's name.

Each export runs the exported model on up to 64 images and compares its outputs with the
Keras model's: a max absolute difference above TOLERANCE fails the export and nothing is
left at the destination. The model's input is what `transfer predict` feeds it: float32
images (N, size, size, channels) in [0, 1], decoded and resized by the preprocessing the
run's manifest records; the export manifest says so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np

from transfer import vocabulary
from transfer.errors import TransferError

FORMATS = vocabulary.EXPORT_FORMATS
SUFFIX = {"savedmodel": "", "onnx": ".onnx", "litert": ".tflite"}
RUNTIMES = {"onnx": ("tf2onnx", "onnxruntime"), "litert": ("ai_edge_litert",)}
TOLERANCE = 1e-4


class ExportMismatch(RuntimeError):
    """The exported model does not compute what the Keras model computes."""


def check_runtime(fmt: str) -> None:
    """Refuse (one line) a format whose converter or runtime is not installed."""
    if fmt not in FORMATS:
        raise TransferError(f"format must be one of {', '.join(FORMATS)}. Received: format={fmt!r}")
    missing = [m for m in RUNTIMES.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise TransferError(f"exporting to {fmt} needs {', '.join(missing)}: pip install -e \".[export]\"")


def run_exported(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """The exported model's outputs on `images`, through its own runtime."""
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # held: its functions refer to its variables
        return np.asarray(loaded.serve(tf.constant(images)))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0])
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], images)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def export(model, fmt: str, out: Path, images: np.ndarray) -> float:
    """Export `model` to `out` (written under a temporary name, moved into place once checked);
    returns the max absolute difference from the Keras model on `images`."""
    check_runtime(fmt)
    staging = out.with_name(f".{out.stem}.partial{out.suffix}")  # the converters insist on their suffix
    _remove(staging)
    try:
        expected = np.asarray(model(images, training=False))  # also builds a model loaded from a file
        if fmt == "onnx":
            _export_onnx(model, staging)
        else:
            model.export(str(staging), format=FORMATS[fmt], verbose=False)
        got = run_exported(fmt, staging, images)
        diff = float(np.max(np.abs(got.reshape(expected.shape) - expected))) if len(images) else 0.0
        if not diff <= TOLERANCE:
            raise ExportMismatch(f"the {fmt} export differs from the Keras model by up to {diff:.2e} "
                                 f"(more than {TOLERANCE:g}) on {len(images)} images; nothing was written")
        _remove(out)
        os.replace(staging, out)
        return diff
    finally:
        _remove(staging)


def _export_onnx(model, path: Path) -> None:
    """`model` (float32 images in, one output) as an ONNX file, its fixed constants inside the graph."""
    import tensorflow as tf
    from tf2onnx import convert, tf_loader

    from transfer import internals

    internals.patch_tf2onnx()
    name = model.inputs[0].name
    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name=name)
    traced = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    given = [t.name for t in traced.inputs[:1]]  # the image input; the rest are captured variables and constants
    outputs = [t.name for t in traced.outputs]
    with tf.device("/cpu:0"):
        frozen = tf_loader.from_function(traced, given, outputs)
    convert.from_graph_def(frozen, name=model.name, input_names=given, output_names=outputs,
                           tensors_to_rename={given[0]: name}, output_path=str(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
