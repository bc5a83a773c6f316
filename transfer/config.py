"""Run configurations: frozen dataclasses whose field defaults are the only defaults.

The CLI builds one of these from its options (a `--config FILE.toml` fills in
option defaults first) and hands it to a pipeline's `run(cfg)`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from transfer.builtins import DEFAULT_TEST_FRACTION
from transfer.errors import TransferError


def _positive(name: str, value, minimum=1) -> None:
    if value is not None and value < minimum:
        raise TransferError(f"{name} must be >= {minimum}. Received: {name}={value}")


@dataclass(frozen=True)
class ArchConfig:
    """Encoder architecture: a preset plus optional overrides applied to every block."""

    arch: str = "small"
    filters: tuple[int, ...] | None = None
    kernel_size: int | None = None
    strides: int | None = None
    padding: str | None = None
    pool: str | None = None
    batch_norm: bool | None = None
    activation: str | None = None

    def overrides(self) -> dict:
        return {
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "pool": self.pool,
            "batch_norm": self.batch_norm,
            "activation": self.activation,
        }


@dataclass(frozen=True)
class PretrainConfig(ArchConfig):
    data: str = ""
    out: str = ""
    objective: str = "contrastive"
    image_size: int = 32
    channels: int | None = None
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    results: str = "experiments/results.csv"
    overwrite: bool = False
    plots: bool = True
    experiment: str | None = None  # tag recorded in the row
    strategy: str = "auto"  # tf.distribute: auto | one | mirrored | multiworker (see transfer.distribute)

    def __post_init__(self):
        for name in ("image_size", "epochs", "batch_size", "channels"):
            _positive(name, getattr(self, name))
        if not self.learning_rate > 0:
            raise TransferError(f"learning_rate must be > 0. Received: learning_rate={self.learning_rate}")


@dataclass(frozen=True)
class FineTuneConfig(ArchConfig):
    data: str = ""
    encoder: str = "random"
    freeze: str = "all"
    labels_per_class: int | None = None  # None: all
    test_data: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    readout: str = "avg"
    head: tuple[int, ...] = ()  # (): linear softmax solved exactly; else hidden units trained by Adam
    dropout: float = 0.3
    unfreeze_top: int = 1
    fine_tune_learning_rate: float = 1e-4
    fine_tune_epochs: int = 30
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    image_size: int = 32
    channels: int | None = None
    out: str | None = None
    results: str = "experiments/results.csv"
    overwrite: bool = False
    experiment: str | None = None  # tag recorded in the row
    strategy: str = "auto"  # tf.distribute: auto | one | mirrored | multiworker (see transfer.distribute)

    def __post_init__(self):
        for name in ("labels_per_class", "epochs", "batch_size", "image_size", "channels", "fine_tune_epochs"):
            _positive(name, getattr(self, name))
        _positive("unfreeze_top", self.unfreeze_top, minimum=0)
        if self.freeze not in ("all", "none"):
            raise TransferError(f"freeze must be 'all' or 'none'. Received: freeze={self.freeze!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TransferError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        if not 0.0 < self.test_fraction < 1.0:
            raise TransferError(f"test_fraction must be between 0 and 1. Received: test_fraction={self.test_fraction}")
        if not self.learning_rate > 0:
            raise TransferError(f"learning_rate must be > 0. Received: learning_rate={self.learning_rate}")
        for u in self.head:
            _positive("head units", u)


@dataclass(frozen=True)
class PrepareConfig:
    src: str = ""
    out: str = ""
    image_size: int = 32
    channels: int | None = None
    labeled: bool = False

    def __post_init__(self):
        for name in ("image_size", "channels"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class CompareConfig:
    results: str = "experiments/results.csv"
    by: tuple[str, ...] = ("data", "method", "labels_per_class")
    metric: str = "test_accuracy"
    format: str = "text"
    plot: str | None = None  # a PNG path: accuracy against labels per class


@dataclass(frozen=True)
class PredictConfig:
    model: str = ""
    data: str = ""
    out: str = "predictions.csv"
    batch_size: int = 256
    overwrite: bool = False


@dataclass(frozen=True)
class VisualizeConfig:
    run_dir: str = ""
    out: str | None = None  # None: RUN_DIR/visualize
    layer: str | None = None  # None: the top block's last activation
    units: tuple[int, ...] | None = None  # None: the first 8 channels (or all, if fewer)
    image: str | None = None  # None: the first image of the pretraining data


@dataclass(frozen=True)
class DemoConfig:
    out: str | None = None  # None: runs/demo-<timestamp>
    arch: str = "small"
    image_size: int = 16
    pretrain_epochs: int | None = None  # None: PretrainConfig's default
    fine_tune_epochs: int | None = None  # None: FineTuneConfig's default
    labels_per_class: tuple[int, ...] = (5, 20)
    seeds: tuple[int, ...] = (0, 1, 2)


def field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """Parse a TOML file; a missing file or invalid TOML is a TransferError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise TransferError(f"{what} not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TransferError(f"{path}: not valid TOML ({exc})") from None


def load_toml(path: str | Path, allowed: set[str]) -> dict:
    """Read a TOML config file into {option_name: value}; keys may use - or _.

    Raises:
        TransferError: unreadable file, invalid TOML, or a key that names no option.
    """
    raw = read_toml(path)
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in allowed:
            raise TransferError(f"{path}: unknown option '{key}'. Known: {', '.join(sorted(allowed))}")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        out[name] = value
    return out
