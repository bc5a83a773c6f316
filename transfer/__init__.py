"""transfer: pretrain convolutional bottom layers on unlabeled images, reuse them on labeled tasks.

The Python API is the CLI's commands as functions, each taking its config object (or the
same options as keywords) and returning what the command records:

    import transfer

    transfer.pretrain(data="digits", image_size=16, out="runs/enc")          # the results row
    transfer.evaluate(encoder="runs/enc", data="digits")                       # the feature-quality rows
    transfer.select(data="digits", labeled=True, encoder="runs/enc", labels=10, out="to_label.csv")
    row = transfer.fine_tune(data="digits", encoder="runs/enc", labels_per_class=5, out="runs/ft")
    table = transfer.compare(results="experiments/results.csv")               # the summary DataFrame

Bad input raises `transfer.TransferError` (what the CLI prints as its one `Error:` line).
Importing this package loads neither TensorFlow nor the pipelines: each function does, when
called. The config classes (`transfer.PretrainConfig`, ...) are `transfer.config`'s; options
given as keywords are the CLI's, flat (`threshold=0.9`), and land in their config's section
(`FineTuneConfig.fixmatch.threshold`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["pretrain", "fine_tune", "select", "evaluate", "compare", "TransferError", "PretrainConfig",
           "FineTuneConfig", "BudgetConfig", "ClassifierConfig", "FixMatchConfig", "SelectConfig", "EvaluateConfig",
           "CompareConfig"]

_CONFIGS = {"PretrainConfig", "FineTuneConfig", "BudgetConfig", "ClassifierConfig", "FixMatchConfig", "SelectConfig",
            "EvaluateConfig", "CompareConfig"}


def __getattr__(name: str):  # PEP 562: the config classes and the error, loaded when first asked for
    if name in _CONFIGS:
        from transfer import config

        return getattr(config, name)
    if name == "TransferError":
        from transfer.errors import TransferError

        return TransferError
    raise AttributeError(f"module 'transfer' has no attribute {name!r}")


def _call(command: str, config_class: str, config, options: dict, log, tensorflow: bool = True):
    """Run `command`'s pipeline on `config` (or a config built from `options`, not both)."""
    import importlib

    from transfer import config as configs
    from transfer.errors import TransferError

    cls = getattr(configs, config_class)
    if config is not None and options:
        raise TransferError(f"{command}: give a {config_class} or options, not both")
    cfg = config if config is not None else configs.make(cls, **configs.renamed(cls, options, _deprecated))
    if not isinstance(cfg, cls):
        raise TransferError(f"{command}: expected a {config_class}, got {type(cfg).__name__}")
    if tensorflow:
        from transfer import internals  # imports TensorFlow

        internals.check_versions()
    pipeline = importlib.import_module(f"pipelines.{command}")
    return pipeline.run(cfg, log=log)


def _deprecated(message: str) -> None:
    import warnings

    warnings.warn(message, DeprecationWarning, stacklevel=4)


def pretrain(config=None, *, log=print, **options) -> dict:
    """Pretrain an encoder without labels (`transfer pretrain`); returns its results row."""
    return _call("pretrain", "PretrainConfig", config, options, log)


def fine_tune(config=None, *, log=print, **options) -> dict:
    """Fine-tune a classifier (`transfer fine-tune`); returns its results row (test accuracy, ...)."""
    return _call("fine_tune", "FineTuneConfig", config, options, log)


def select(config=None, *, log=print, **options) -> dict:
    """Choose which images to label (`transfer select`); returns its results row."""
    return _call("select", "SelectConfig", config, options, log)


def evaluate(config=None, *, log=print, **options) -> list[dict]:
    """Score an encoder's features (`transfer evaluate`); returns one row per readout and baseline."""
    return _call("evaluate", "EvaluateConfig", config, options, log)


def compare(config=None, *, log=print, **options):
    """Summarize results tables (`transfer compare`); returns the summary as a pandas DataFrame."""
    return _call("compare", "CompareConfig", config, options, log, tensorflow=False)
