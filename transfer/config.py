"""Run configurations: frozen dataclasses whose field defaults are the only defaults.

The CLI builds one of these from its options (a `--config FILE.toml` fills in
option defaults first) and hands it to a pipeline's `run(cfg)`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from transfer import backbones
from transfer.data import DEFAULT_TEST_FRACTION
from transfer.errors import TransferError
from transfer.vocabulary import (AUGMENT_POLICIES, BUDGET_SELECTIONS, BY_FEATURES, EXPORT_FORMATS, OBJECTIVES,
                                 PRECISIONS, READOUTS, SELECTIONS, STRATEGIES, TWO_VIEW, BUILTINS,
                                 CLASSIFIER_SELECTIONS)


def _positive(name: str, value, minimum=1) -> None:
    if value is not None and value < minimum:
        raise TransferError(f"{name} must be >= {minimum}. Received: {name}={value}")


def _rate(name: str, value) -> None:
    if value is not None and not value > 0:
        raise TransferError(f"{name} must be > 0. Received: {name}={value}")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise TransferError(f"{name} must be one of {', '.join(map(str, allowed))}. Received: {name}={value!r}")


def _readout(readout: str, encoder: str, option: str = "readout") -> None:
    """A readout of READOUTS; projector only from a pretrained encoder (pixels and random have no head)."""
    _choice(option.replace("-", "_"), readout, READOUTS)
    if readout == "projector" and (encoder in ("random", "pixels") or backbones.is_backbone(encoder)):
        raise TransferError(f"--{option} projector reads a pretrained encoder's projection head; {encoder} has none")


def _weights(encoder: str, weights: str | None) -> None:
    """--weights serves a keras.applications backbone, which needs it (transfer.backbones)."""
    if backbones.is_backbone(encoder):
        backbones.name_of(encoder)
        backbones.check_weights(encoder, weights)
    elif weights is not None:
        raise TransferError(f"--weights serves a keras:NAME backbone (--encoder, or pretrain's --init); {encoder} "
                            "brings its own weights")


def _purity(purity: float | None, strategy: str | None, option: str) -> None:
    """--purity is probcover's, in (0, 1)."""
    if purity is None:
        return
    if strategy != "probcover":
        raise TransferError(f"--purity is probcover's (the share of pure balls that sets its radius); give "
                            f"{option} probcover")
    if not 0.0 < purity < 1.0:
        raise TransferError(f"purity must be in (0, 1). Received: purity={purity}")


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
class RunConfig(ArchConfig):
    """What every training run (pretrain, fine-tune) has: its data, images, seed, outputs, strategy."""

    data: str = ""
    image_size: int = 32
    channels: int | None = None
    seed: int = 0
    out: str | None = None
    results: str = "experiments/results.csv"
    overwrite: bool = False
    experiment: str | None = None  # tag recorded in the row
    strategy: str = "auto"  # tf.distribute: auto | one | mirrored | multiworker (see transfer.distribute)
    precision: str = "float32"  # mixed: compute in bfloat16, keep variables in float32 (for GPUs)
    xla: bool = False  # compile training steps with XLA (jit_compile; for GPUs)
    tensorboard: str | None = None  # TensorBoard logs under DIR/<run id> (see transfer.board)

    def __post_init__(self):
        for name in ("image_size", "channels"):
            _positive(name, getattr(self, name))
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    objective: str = "contrastive"
    epochs: int | None = None  # None: 300, fewer when that would train on more than 500,000 images
    batch_size: int = 256
    learning_rate: float | None = None  # None: the objective's own (transfer.objectives)
    plots: bool = True
    probe_data: str | None = None  # labeled images watched by an online k-NN probe while pretraining
    # The two-view objectives' (contrastive, vicreg, byol) recipe; None: the objective's own default.
    temperature: float | None = None
    projector: tuple[int, ...] | None = None
    crop: float | None = None  # smallest side of a random crop, as a fraction of the image's
    blur: float | None = None  # strength of the random Gaussian blur of the views (0: none)
    jitter: float | None = None  # strength of the views' brightness/contrast jitter (0: none, 1: SimCLR-like)
    init: str | None = None  # keras:NAME: pretraining continues from an ImageNet backbone (transfer.backbones)
    weights: str | None = None  # --init's weights: imagenet, none or a weights file

    def __post_init__(self):
        super().__post_init__()
        if not self.out:
            raise TransferError("pretrain needs an output run directory (--out)")
        if self.init is not None and not backbones.is_backbone(self.init):
            raise TransferError(f"--init names a keras.applications backbone, keras:NAME. Received: --init {self.init}")
        _weights(self.init or "its own architecture", self.weights)
        _choice("objective", self.objective, OBJECTIVES)
        for name in ("epochs", "batch_size"):
            _positive(name, getattr(self, name))
        _rate("learning_rate", self.learning_rate)
        _rate("temperature", self.temperature)
        for name, value in (("crop", self.crop), ("blur", self.blur), ("jitter", self.jitter)):
            if value is not None and not (0.0 < value <= 1.0 if name == "crop" else 0.0 <= value <= 1.0):
                bounds = "in (0, 1]" if name == "crop" else "in [0, 1]"
                raise TransferError(f"{name} must be {bounds}. Received: {name}={value}")
        for width in self.projector or ():
            _positive("projector widths", width)
        views = (self.projector, self.crop, self.blur, self.jitter)
        if self.objective not in TWO_VIEW and any(v is not None for v in views):
            raise TransferError(f"--projector, --crop, --blur and --jitter are the two-view objectives' ({', '.join(TWO_VIEW)}) "
                                f"options; objective {self.objective} has no views to tune")
        if self.objective != "contrastive" and self.temperature is not None:
            raise TransferError(f"--temperature is the contrastive objective's option (NT-Xent's softmax); "
                                f"objective {self.objective} has no temperature")


@dataclass(frozen=True)
class FineTuneConfig(RunConfig):
    encoder: str = "random"  # a pretrain run, random, pixels, or keras:NAME (transfer.backbones)
    weights: str | None = None  # a keras:NAME backbone's: imagenet, none or a weights file
    freeze: str = "none"  # measured best on digits: probe, then fine-tune everything with augmentation
    labels_per_class: int | None = None  # None: all (stratified: the oracle draw, N of every class)
    labels: int | None = None  # a total budget instead, chosen by `selection` (transfer.budget)
    selection: str | None = None  # random (default with labels) | stratified | typiclust | probcover | kcenter
    select_encoder: str | None = None  # features to select by: a pretrain run or pixels (default: the encoder's)
    select_readout: str | None = None  # the select encoder's readout (None: auto, through its projection head if any)
    purity: float | None = None  # probcover's share of pure balls (None: transfer.selection.PURITY)
    test_data: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    readout: str = "auto"  # auto: chosen by cross-validation on the labeled images (see fine-tune)
    adapt_bn: bool = False  # re-estimate BatchNorm statistics on the target images (AdaBN)
    head: tuple[int, ...] = ()  # (): linear softmax solved exactly; else hidden units trained by Adam
    dropout: float = 0.3
    unfreeze_top: int = 1
    fine_tune_learning_rate: float = 1e-4
    fine_tune_epochs: int = 30
    epochs: int | None = None  # None: 100 passes over the labeled images, at least 500 steps (see fine-tune)
    batch_size: int = 32
    learning_rate: float = 1e-3
    augment: str = "label-preserving"  # see transfer.augment.POLICIES
    unlabeled: str | None = None  # a pool of unlabeled images: semi-supervised fine-tuning (FixMatch)
    mu: int = 7  # unlabeled images per labeled image in a step
    threshold: float = 0.95  # pseudo-label confidence
    unlabeled_weight: float = 1.0  # lambda: the unlabeled loss's weight
    steps: int = 2000  # semi-supervised training steps
    semi_learning_rate: float = 0.03  # FixMatch's SGD (see transfer.semi.optimizer)
    teacher: str = "batch"  # FixMatch's pseudo-labels: "batch" (the reference's trained pass) or "inference"
    align: bool = True  # distribution alignment of the pseudo-labels (see transfer.semi)

    def __post_init__(self):
        super().__post_init__()
        _choice("augment", self.augment, AUGMENT_POLICIES)
        for name in ("mu", "steps"):
            _positive(name, getattr(self, name))
        if not 0.0 < self.threshold <= 1.0:
            raise TransferError(f"threshold must be in (0, 1]. Received: threshold={self.threshold}")
        if self.unlabeled_weight < 0:
            raise TransferError(f"unlabeled_weight must be >= 0. Received: unlabeled_weight={self.unlabeled_weight}")
        if self.unlabeled and self.encoder == "pixels":
            raise TransferError("--unlabeled needs an encoder to train (not --encoder pixels)")
        if self.labels is not None and self.labels_per_class is not None:
            raise TransferError("give --labels (a total) or --labels-per-class, not both")
        if self.selection is not None and self.labels is None:
            raise TransferError("--selection chooses the --labels images; give --labels N")
        if self.selection is not None:
            _choice("selection", self.selection, BUDGET_SELECTIONS)
        if self.select_encoder and self.selection not in BY_FEATURES:
            raise TransferError(f"--select-encoder serves --selection {', '.join(BY_FEATURES)}")
        if self.select_readout is not None:  # unused by other selections (an experiment's grid mixes them)
            _readout(self.select_readout, self.select_encoder or self.encoder, "select-readout")
        _purity(self.purity, self.selection, "--selection")
        for name in ("labels_per_class", "labels", "epochs", "batch_size", "fine_tune_epochs"):
            _positive(name, getattr(self, name))
        _positive("unfreeze_top", self.unfreeze_top, minimum=0)
        _choice("freeze", self.freeze, ("all", "none"))
        _readout(self.readout, self.encoder)
        _weights(self.encoder, self.weights)
        if not 0.0 <= self.dropout < 1.0:
            raise TransferError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        if not 0.0 < self.test_fraction < 1.0:
            raise TransferError(f"test_fraction must be between 0 and 1. Received: test_fraction={self.test_fraction}")
        _rate("learning_rate", self.learning_rate)
        _rate("fine_tune_learning_rate", self.fine_tune_learning_rate)
        _rate("semi_learning_rate", self.semi_learning_rate)
        _choice("teacher", self.teacher, ("inference", "batch"))
        for u in self.head:
            _positive("head units", u)


@dataclass(frozen=True)
class EvaluateConfig:
    """`transfer evaluate`: the standard feature evaluation (transfer.evaluation)."""

    encoder: str = ""  # a pretrain run directory, or keras:NAME (an ImageNet backbone)
    weights: str | None = None  # a keras:NAME backbone's: imagenet, none or a weights file
    image_size: int = 32  # for keras:NAME (a pretrain run brings its own)
    data: str = ""
    test_data: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    readouts: tuple[str, ...] = ("avg", "multi", "stats", "projector")  # the default: projector if the encoder has one
    baselines: bool = True  # a random encoder of the same architecture (pixels are always scored)
    draws: int = 5  # random draws of the few labels per class
    seed: int = 0
    results: str = "experiments/results.csv"
    experiment: str | None = None

    def __post_init__(self):
        if not self.encoder:
            raise TransferError("evaluate needs an encoder run directory (--encoder)")
        _weights(self.encoder, self.weights)
        _positive("image_size", self.image_size)
        for r in self.readouts:
            _choice("readout", r, [x for x in READOUTS if x != "auto"])
        _positive("draws", self.draws)


@dataclass(frozen=True)
class SelectConfig(ArchConfig):
    """`transfer select`: which images of a pool to label (transfer.selection)."""

    data: str = ""
    encoder: str = ""  # a pretrain run directory, or pixels / random (with the arch options), or keras:NAME
    weights: str | None = None  # a keras:NAME backbone's: imagenet, none or a weights file
    budget: int = 0
    out: str = ""  # the CSV to write (path,label); the contact sheet beside it
    strategy: str = "typiclust"
    purity: float | None = None  # probcover's share of pure balls (None: transfer.selection.PURITY)
    exclude: str | None = None  # a CSV with a path column: images already labeled
    labeled: bool = False  # the pool has labels (class folders, a label column): filled in, test split left out
    readout: str = "auto"  # auto: what the encoder's fine-tunes read (its projection head if it has one, else avg)
    image_size: int = 32  # for pixels and random (a pretrained encoder brings its own)
    channels: int | None = None
    seed: int = 0
    sheet: bool = True
    format: str = "csv"  # csv: path,label; label-studio: a task file to import and a labeling config
    model: str | None = None  # a fine-tune run: its classifier's uncertainty chooses (--strategy margin)
    classes: tuple[str, ...] = ()  # the labeling config's choices (default: the pool's classes, when it has labels)
    overwrite: bool = False  # replace an existing list (and contact sheet) that select wrote
    results: str = "experiments/results.csv"
    experiment: str | None = None

    def __post_init__(self):
        if not self.encoder:
            raise TransferError("select needs an encoder: a pretrain run directory, pixels or random (--encoder)")
        if not self.out:
            raise TransferError("select needs the CSV to write (--out)")
        _positive("budget", self.budget)
        _positive("image_size", self.image_size)
        _positive("channels", self.channels)
        _choice("strategy", self.strategy, (*SELECTIONS, *CLASSIFIER_SELECTIONS))
        if (self.strategy in CLASSIFIER_SELECTIONS) != bool(self.model):
            raise TransferError("--strategy margin chooses by a trained classifier's uncertainty: give it --model RUN "
                                "(a fine-tune run directory)" if not self.model else
                                f"--model is for --strategy margin (a classifier's uncertainty); --strategy "
                                f"{self.strategy} chooses by the features alone")
        _purity(self.purity, self.strategy, "--strategy")
        _readout(self.readout, self.encoder)
        _weights(self.encoder, self.weights)
        _choice("format", self.format, ("csv", "label-studio"))
        if self.format == "label-studio" and self.data in BUILTINS:
            raise TransferError(f"--format label-studio needs image files (Label Studio serves them); built-in "
                                f"'{self.data}' is held in memory: use --format csv")
        if self.format == "label-studio" and not str(self.out).lower().endswith(".json"):
            raise TransferError(f"--format label-studio writes a Label Studio task file: give --out a .json path "
                                f"(the labeling config goes beside it, .xml). Received: --out {self.out}")
        if self.classes and len(set(self.classes)) != len(self.classes):
            raise TransferError(f"--classes names a class twice. Received: {','.join(self.classes)}")


@dataclass(frozen=True)
class EmbedConfig:
    """`transfer embed`: every image's features, with its path, content id and label."""

    encoder: str = ""  # a pretrain run directory, or pixels, or keras:NAME
    weights: str | None = None  # a keras:NAME backbone's: imagenet, none or a weights file
    data: str = ""
    out: str = ""  # FILE.npy: the features; FILE.csv beside it: one row per image
    readout: str = "auto"  # auto: what the encoder's fine-tunes and selections read (its projection head if any)
    image_size: int = 32  # for pixels (an encoder brings its own)
    channels: int | None = None
    labeled: bool = False  # read labels (class folders, a label column; built-ins always)
    neighbors: int = 0  # each image's K nearest neighbours (cosine) in the CSV
    duplicates: float | None = None  # FILE-duplicates.csv: pairs closer than this cosine distance
    overwrite: bool = False  # replace existing files that embed wrote

    def __post_init__(self):
        if not self.encoder:
            raise TransferError("embed needs an encoder: a pretrain run directory or pixels (--encoder)")
        if not self.out.endswith(".npy"):
            raise TransferError(f"--out names the features file, FILE.npy (FILE.csv is written beside it). "
                                f"Received: {self.out!r}")
        _readout(self.readout, self.encoder)
        _weights(self.encoder, self.weights)
        _positive("image_size", self.image_size)
        _positive("channels", self.channels)
        _positive("neighbors", self.neighbors, minimum=0)
        if self.duplicates is not None and not 0.0 <= self.duplicates <= 2.0:
            raise TransferError(f"duplicates is a cosine distance in [0, 2]. Received: duplicates={self.duplicates}")


@dataclass(frozen=True)
class ExportConfig:
    """`transfer export`: a run's model in a deployment format (transfer.export)."""

    run_dir: str = ""
    format: str = "savedmodel"
    out: str | None = None  # None: RUN_DIR/export/model(.onnx|.tflite)
    overwrite: bool = False

    def __post_init__(self):
        _choice("format", self.format, EXPORT_FORMATS)


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
    tables: tuple[str, ...] = ()  # results tables read as one; () -> (results,)
    results: str = "experiments/results.csv"
    by: tuple[str, ...] = ("data", "method", "labels_per_class")
    metric: str = "test_accuracy"
    # a row filter (transfer.rowfilter, checked when compare runs, before any table is read),
    # e.g. "arch == 'vgg' and seed < 3"
    where: str | None = None
    sort: str | None = None  # a column of the summary
    descending: bool = False
    top: int | None = None
    columns: tuple[str, ...] = ()  # summary columns to show; () -> all
    format: str = "text"
    plot: str | None = None  # a PNG path: accuracy against labels per class
    html: str | None = None  # one self-contained page: verdict, tables, plot, costs
    verbose: bool = False  # every verdict sentence (one per budget and selection), not the headline alone

    def __post_init__(self):
        _choice("format", self.format, ("text", "markdown", "csv", "json"))
        _positive("top", self.top)


@dataclass(frozen=True)
class PredictConfig:
    model: str = ""
    data: str = ""
    out: str = "predictions.csv"
    batch_size: int = 256
    overwrite: bool = False

    def __post_init__(self):
        _positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class VisualizeConfig:
    run_dir: str = ""
    out: str | None = None  # None: RUN_DIR/visualize
    layer: str | None = None  # None: the top block's last activation
    units: tuple[int, ...] | None = None  # None: the first 8 channels (or all, if fewer)
    image: str | None = None  # None: the first image of the pretraining data

    def __post_init__(self):
        for u in self.units or ():
            _positive("units", u, minimum=0)


@dataclass(frozen=True)
class DemoConfig:
    out: str | None = None  # None: runs/demo-<timestamp>
    arch: str = "small"
    image_size: int = 16
    pretrain_epochs: int | None = 80  # a first contact in about 3 minutes (pretrain's default: 300 on digits)
    fine_tune_epochs: int | None = None  # None: FineTuneConfig's default
    # few labels, the regime the toolkit is for: self-supervised features pay most at the fewest (1-2 per class)
    labels_per_class: tuple[int, ...] = (2,)
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self):
        for name in ("image_size", "pretrain_epochs", "fine_tune_epochs"):
            _positive(name, getattr(self, name))
        for n in self.labels_per_class:
            _positive("labels_per_class", n)
        for s in self.seeds:
            _positive("seed", s, minimum=0)


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment file (TOML; see `pipelines/experiment.py` for its keys)."""

    file: str = ""
    dry_run: bool = False


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


def check_type(value, hint, name: str, where: str) -> None:
    """Refuse `value` unless it is of the type a config field is annotated with (TOML values:
    no None; lists for tuples; whole numbers are numbers): one line naming the key, the type
    expected and what was received."""
    if not _fits(value, hint):
        raise TransferError(f"{where}: {name} must be {_describe_type(hint)}. Received: {name}={value!r}")


def _arms(hint) -> list:
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _fits(value, hint) -> bool:
    import typing

    for arm in _arms(hint):
        if typing.get_origin(arm) in (tuple, list):
            item = typing.get_args(arm)[0] if typing.get_args(arm) else object
            if isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value):
                return True
        elif arm is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif arm is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif arm is object or isinstance(value, arm):
            return True
    return False


def _describe_type(hint) -> str:
    import typing

    words = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
    parts = []
    for arm in _arms(hint):
        if typing.get_origin(arm) in (tuple, list):
            item = typing.get_args(arm)[0] if typing.get_args(arm) else object
            parts.append(f"a list, each {_describe_type(item)}" if item is not object else "a list")
        else:
            parts.append(words.get(arm, getattr(arm, "__name__", str(arm))))
    return " or ".join(parts)


def check_section(section: dict, cls, where: str) -> None:
    """Every key of a TOML section against `cls`'s field types (dataclass fields)."""
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        check_type(value, hints[key], key, where)
