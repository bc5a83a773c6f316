"""TensorFlow imported without its start-up chatter (oneDNN, CUDA, absl lines and library
warnings), unless the user asks for it: `transfer --verbose` or TRANSFER_VERBOSE=1. Imports
nothing heavy itself: `transfer --help` stays fast."""

from __future__ import annotations

import os

VERBOSE_ENV = "TRANSFER_VERBOSE"  # 1: show TensorFlow's own log lines and warnings (as --verbose)


def verbose() -> bool:
    """Did the user ask for TensorFlow's own lines (`transfer --verbose`, or TRANSFER_VERBOSE=1)?"""
    import sys

    return ("--verbose" in sys.argv[1:2] or
            os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no"))


def import_tensorflow() -> None:
    """Import TensorFlow quietly unless --verbose (or TRANSFER_VERBOSE=1): its C++ log
    lines (oneDNN, CUDA, absl; at any level, set before the import), its Python logger
    and the library warnings Keras and TensorFlow raise are hidden, and so are the
    lines the import itself prints. If the import fails, what it printed is shown after all.
    """
    import sys
    import tempfile
    import warnings

    loud = verbose()
    if not loud:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # multiworker's gRPC chatter
        for module in ("keras", "tensorflow", "absl", "sklearn"):
            warnings.filterwarnings("ignore", module=module)
    if "tensorflow" in sys.modules:
        return
    if loud:
        import tensorflow  # noqa: F401,F811

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices()  # device probing prints too (e.g. no CUDA driver)
            tensorflow.get_logger().setLevel("ERROR")  # retracing notices are not the user's concern
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
