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
                                 PRECISIONS, PRESETS, READOUTS, SELECTIONS, STRATEGIES, TWO_VIEW, BUILTINS,
                                 CLASSIFIER_SELECTIONS, STARTS, STRONG_VIEWS)


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


def option(default=None, help: str = "", **how) -> dataclasses.Field:
    """A config field that is also a command-line option: `cli.py` makes every command's options
    from these. `help` is what --help shows; `how` says how the option reads: choices, path
    ("dir", "file" or "any"), metavar, reader ("budget", "head"), required, argument (positional),
    flag (True: --x/--no-x), shown (the default as the option reads it), was (the field's name
    before a rename: still read, with a warning, for one release). --help lists the arguments
    and required options first, then the fields the command's own config declares, in the order
    it declares them, then the inherited ones. A field without help is no option (set by code,
    or by an experiment file)."""
    return dataclasses.field(default=default, metadata={"help": help, **how})


def section(cls) -> dataclasses.Field:
    """A group of options kept together as a config of its own (`cfg.<name>.<field>`, e.g.
    `cfg.fixmatch.threshold`). Wherever options are read by name (the command line, --config
    files, experiment sections) its fields are options of the command like any other (flat:
    --threshold); `make` gathers them into the section, which validates itself. --help lists them
    where the section is declared."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


def sections(cls) -> dict[str, type]:
    """{section name: its config class} of `cls`."""
    return {f.name: f.metadata["section"] for f in dataclasses.fields(cls) if "section" in f.metadata}


def settable(cls) -> dict[str, tuple[dataclasses.Field, object, str | None]]:
    """Every field of `cls` settable by name, a section's fields in its place: {name: (field, its type,
    the section holding it or None)}, in declaration order. Names are unique across sections."""
    import typing

    hints, fields, out = typing.get_type_hints(cls), dataclasses.fields(cls), {}
    own = {f.name for f in fields}
    for f in fields:
        inner = f.metadata.get("section")
        if inner is None:
            out[f.name] = (f, hints[f.name], None)
            continue
        for name, (g, hint, _) in settable(inner).items():
            if name in out or name in own:
                raise TypeError(f"{cls.__name__}: section {f.name} repeats the option name {name}")
            out[name] = (g, hint, f.name)
    return out


def option_fields(cls) -> list[tuple[dataclasses.Field, object]]:
    """The (field, type) of every option of `cls` (the fields with help), sections' fields in place."""
    return [(f, hint) for f, hint, _ in settable(cls).values() if f.metadata.get("help")]


def make(cls, **options):
    """A `cls` from options by their flat names (as `settable` names them): each section's
    fields gathered into that section (a section may also be given whole, by its own name).

    Raises:
        TypeError: a name that is no field of `cls` or of its sections.
        TransferError: a value a config refuses.
    """
    holder = {name: where for name, (_, _, where) in settable(cls).items() if where is not None}
    top, grouped = {}, {}
    for key, value in options.items():
        if key in holder:
            grouped.setdefault(holder[key], {})[key] = value
        else:
            top[key] = value
    for name, values in grouped.items():
        top[name] = dataclasses.replace(top.get(name) or sections(cls)[name](), **values)
    return cls(**top)


def flat(cfg) -> dict:
    """A config's fields by their flat names (`make`'s inverse): sections' fields in place."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(flat(value) if "section" in f.metadata else {f.name: value})
    return out


SAME_PATH = "(an interrupted run of the same configuration still resumes)"
STRATEGY_HELP = ("tf.distribute strategy: one device, mirrored (this machine's GPUs), multiworker (machines listed in "
                 "TF_CONFIG; only worker 0 writes), auto (multiworker if TF_CONFIG lists several workers, mirrored if "
                 "several GPUs, else one).")
WEIGHTS_HELP = ("With --encoder keras:NAME: imagenet (fetched once by Keras into ~/.keras/models; needs the internet "
                "the first time), a weights file of the backbone without its top, or none (random weights).")
BACKBONES = ("MobileNetV3Small, MobileNetV3Large, EfficientNetB0, EfficientNetV2B0, ResNet50V2, ConvNeXtTiny; with "
             "--weights")
READOUT_HELP = ("How the encoder's last block becomes one feature vector. auto (default): what its fine-tunes and "
                "selections read, through its projection head when it has one (the two-view objectives), else avg.")
PURITY_HELP = ("probcover: the share of balls holding one k-means cluster that sets the radius (default 0.95, the "
               "authors'; lower: wider balls, fewer images in the densest regions).")
CHANNELS_HELP = "Channels (default: 1 if all images are gray, else 3)."
RESULTS = "experiments/results.csv"


@dataclass(frozen=True)
class ArchConfig:
    """Encoder architecture: a preset plus optional overrides applied to every block."""

    arch: str = option("small", "Encoder preset: small (3 conv+BN+max-pool blocks), lenet5, vgg (2 convs per block), "
                       "resnet (residual units).", choices=PRESETS)
    filters: tuple[int, ...] | None = option(None, "Filters per block, e.g. 32,64,128 (sets the number of blocks).")
    kernel_size: int | None = option(None, "Kernel size of every conv (preset's if unset).")
    strides: int | None = option(None, "Stride of each block's first conv.")
    padding: str | None = option(None, "Conv padding.", choices=("same", "valid"))
    pool: str | None = option(None, "Pooling after each block.", choices=("max", "avg", "none"))
    batch_norm: bool | None = option(None, "BatchNorm after each conv.", flag=True)
    activation: str | None = option(None, "Activation, e.g. relu, tanh, gelu.")

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

    data: str = option("", "Images: directory, CSV manifest or built-in name.", required=True)
    image_size: int = option(32, "Images are resized to this square size.")
    channels: int | None = option(None, CHANNELS_HELP)
    seed: int = option(0, "Seed of initialization, shuffling and augmentation.")
    out: str | None = option(None, "Run directory (default runs/RUN_ID).", path="dir")
    results: str = option(RESULTS, "Results table to append to.", path="file")
    overwrite: bool = option(False, f"Replace an existing run directory {SAME_PATH}.")
    experiment: str | None = None  # tag recorded in the row (set by `transfer experiment`)
    strategy: str = option("auto", STRATEGY_HELP, choices=STRATEGIES)  # see transfer.distribute
    precision: str = option("float32", "mixed: compute in bfloat16 with float32 variables (Keras's mixed_bfloat16 "
                            "policy) for GPUs with bfloat16 (Ampere and later); the saved model keeps that policy. "
                            "On CPU it is slower.", choices=PRECISIONS)
    xla: bool = option(False, "Compile the training steps with XLA (jit_compile). Can help on GPUs; on CPU it made "
                       "training slower here (see README, Benchmarks).", flag=True)
    tensorboard: str | None = option(None, "Write TensorBoard logs under DIR/<run id>: every fit's losses, metrics "
                                     "and learning rate, the preview images, and one HParams record with the run's "
                                     "final metrics (tensorboard --logdir DIR).", metavar="DIR", path="dir")

    def __post_init__(self):
        for name in ("image_size", "channels"):
            _positive(name, getattr(self, name))
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """Pretrain an encoder on unlabeled images (SRC labels are ignored).

    Reports the reconstruction error next to trivial baselines.

    Writes: --out (a run directory: encoder.keras, manifest.json, history.csv,
    config.json, previews; built in OUT.partial, moved into place when complete), one
    row in --results, --tensorboard logs. --overwrite replaces only a run directory.
    """

    data: str = option("", "Unlabeled images: directory, CSV manifest or built-in name.", required=True)
    out: str | None = option(None, "Run directory to create.", required=True, path="dir")
    objective: str = option("contrastive", "Pretraining objective.", choices=OBJECTIVES)
    start: str | None = option(None, "The encoder's weights before the objective trains: random (He initialization) "
                               "or kmeans (every conv layer's filters from k-means on whitened patches of its input, "
                               "bottom to top, Coates & Ng 2011: seconds, no labels; --epochs 0 keeps them as they "
                               "are). Default: kmeans for the two-view objectives (contrastive, vicreg, byol), where "
                               "it was measured; random for the others; --init starts from the backbone's weights.",
                               choices=STARTS)
    epochs: int | None = option(None, "Passes over the unlabeled images (default: 300, or as many as train on "
                                "500,000 images in all when the pool is larger than about 1,700: a bounded default "
                                "cost; 0 with --start kmeans: no objective trained).")
    batch_size: int = option(256, "Images per step (contrastive: also the number of negatives each image is "
                             "contrasted with).")
    learning_rate: float | None = option(None, "Adam's learning rate (default: the objective's own: 1e-3, gan 2e-4).")
    plots: bool = option(True, "Write the preview PNG (reconstructions, views or samples) and the visualize/ report.",
                         flag=True)
    probe_data: str | None = option(None, "Labeled images to watch the features with while pretraining: a k-NN "
                                    "probe's accuracy every few epochs (column probe_knn; images outside the "
                                    "source's test split; nothing is trained on them).", metavar="LABELED")
    # The two-view objectives' (contrastive, vicreg, byol) recipe; None: the objective's own default.
    temperature: float | None = option(None, "contrastive: the softmax temperature of NT-Xent (default 0.3).")
    projector: tuple[int, ...] | None = option(None, "contrastive, vicreg, byol: widths of the projection MLP "
                                               "dropped after pretraining (default 128,64; vicreg 512,512,512; "
                                               "byol 512,128).")
    crop: float | None = option(None, "contrastive, vicreg, byol: the smallest side of a view's random crop, as a "
                                "fraction of the image's (default 0.7).")
    blur: float | None = option(None, "contrastive, vicreg, byol: the strength of the views' random Gaussian blur, "
                                "0 to 1 (default 0.5; 0: none).")
    jitter: float | None = option(None, "contrastive, vicreg, byol: the strength of the views' random brightness "
                                  "and contrast jitter, 0 to 1 (default 1: brightness +-0.3, contrast x0.4-1.6; 0: "
                                  "none).")
    init: str | None = option(None, "Continue from an ImageNet backbone of keras.applications (" + BACKBONES
                              + ") instead of the --arch encoder: domain-adaptive pretraining on these images, saved "
                              "as an ordinary encoder.", metavar="keras:NAME")
    weights: str | None = option(None, WEIGHTS_HELP.replace("--encoder keras:NAME", "--init"),
                                 metavar="imagenet|PATH|none")

    def __post_init__(self):
        super().__post_init__()
        if not self.out:
            raise TransferError("pretrain needs an output run directory (--out)")
        if self.init is not None and not backbones.is_backbone(self.init):
            raise TransferError(f"--init names a keras.applications backbone, keras:NAME. Received: --init {self.init}")
        _weights(self.init or "its own architecture", self.weights)
        _choice("objective", self.objective, OBJECTIVES)
        if self.start is not None:
            _choice("start", self.start, STARTS)
        if self.start is not None and self.init is not None:
            raise TransferError(f"--start {self.start} sets the weights of an --arch encoder; --init {self.init} starts "
                                "from the backbone's own weights. Use one or the other")
        if self.epochs == 0 and self.starts_from() != "kmeans":
            raise TransferError("--epochs 0 trains nothing: it keeps the --start kmeans encoder as it is, and needs "
                                "--start kmeans")
        _positive("epochs", self.epochs, minimum=0)
        _positive("batch_size", self.batch_size)
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

    def starts_from(self) -> str:
        """The weights the objective trains from: --init's backbone, or --start, or its default
        (kmeans for the two-view objectives, random for the others)."""
        return self.init or self.start or ("kmeans" if self.objective in TWO_VIEW else "random")


@dataclass(frozen=True)
class ClassifierConfig:
    """What the classifier reads from the encoder and the head it puts on top (transfer.finetuning):
    `FineTuneConfig.classifier`."""

    readout: str = option("auto", "Features fed to the head: avg (global average pool of the last block), multi "
                          "(average pool of every block), stats (per-channel mean and mean square of every block: "
                          "orderless, for textures), flatten, projector (avg through the projection head a two-view "
                          "objective saved beside the encoder), or auto: projector when the encoder has a head, else "
                          "the one of avg/multi/stats whose linear probe cross-validates best on the labeled images "
                          "(avg for scratch).", choices=READOUTS)
    adapt_bn: bool = option(False, "Re-estimate the encoder's BatchNorm statistics on the target images first (AdaBN; "
                            "the labeled images and up to 2,048 of --unlabeled): for labeled data unlike the "
                            "pretraining data.")
    head: tuple[int, ...] = option((), "linear: a softmax layer on standardized features, solved exactly (L-BFGS, "
                                   "L2) when the encoder is frozen; or hidden units, e.g. 128 or 256,64, trained by "
                                   "Adam for --epochs.", reader="head", shown="linear")
    dropout: float = option(0.3, "Dropout in a head with hidden layers.")

    def __post_init__(self):
        _choice("readout", self.readout, READOUTS)
        if not 0.0 <= self.dropout < 1.0:
            raise TransferError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        for u in self.head:
            _positive("head units", u)


@dataclass(frozen=True)
class BudgetConfig:
    """Which labeled images fine-tune learns from (transfer.budget): `FineTuneConfig.budget`."""

    labels_per_class: int | None = option(None, "Labeled training images per class, or 'all' (a stratified draw: "
                                          "the oracle a user with an unlabeled pool cannot make; see --labels).",
                                          reader="budget")
    labels: int | None = option(None, "A total label budget instead: N images of the pool, chosen by --selection (a "
                                "class may get none).")  # transfer.budget
    selection: str | None = option(None, "How the --labels images are chosen: random (default: a blind draw, as "
                                   "users label), stratified (N / classes of each: the oracle), typiclust, probcover "
                                   "or kcenter (by features, before any label: see transfer select).",
                                   choices=BUDGET_SELECTIONS)
    select_encoder: str | None = option(None, "Features for --selection typiclust|probcover|kcenter: a pretrain run "
                                        "directory, or pixels (default: --encoder when it is pretrained, else "
                                        "pixels).")
    select_readout: str | None = option(None, "The select encoder's readout for --selection (default auto: through "
                                        "its projection head when it has one, as transfer select; avg: the global "
                                        "average pool of its last block).", choices=READOUTS)
    purity: float | None = option(None, "--selection " + PURITY_HELP)  # None: transfer.selection.PURITY

    def __post_init__(self):
        if self.labels is not None and self.labels_per_class is not None:
            raise TransferError("give --labels (a total) or --labels-per-class, not both")
        if self.selection is not None and self.labels is None:
            raise TransferError("--selection chooses the --labels images; give --labels N")
        if self.selection is not None:
            _choice("selection", self.selection, BUDGET_SELECTIONS)
        if self.select_encoder and self.selection not in BY_FEATURES:
            raise TransferError(f"--select-encoder serves --selection {', '.join(BY_FEATURES)}")
        _purity(self.purity, self.selection, "--selection")
        for name in ("labels_per_class", "labels"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class FixMatchConfig:
    """FixMatch's settings (fine-tune --unlabeled; transfer.semi): `FineTuneConfig.fixmatch`."""

    mu: int = option(7, "With --unlabeled: unlabeled images per labeled image in a step.")
    threshold: float = option(0.95, "With --unlabeled: confidence above which a prediction becomes a pseudo-label.")
    unlabeled_weight: float = option(1.0, "With --unlabeled: weight of the unlabeled loss.")
    steps: int = option(2000, "With --unlabeled: training steps.")
    semi_learning_rate: float = option(0.03, "With --unlabeled: FixMatch's learning rate (SGD with Nesterov momentum "
                                       "and weight decay, FixMatch's cosine, the weights' moving average kept, as the "
                                       "reference trains).")
    teacher: str = option("batch", "With --unlabeled: where pseudo-labels come from: inference (the network in "
                          "inference mode, BatchNorm's moving statistics, no backward pass for them: cheaper) or batch "
                          "(the reference: the weak views in the trained pass with the labeled and strong ones).",
                          choices=("inference", "batch"))
    align: bool = option(True, "With --unlabeled: distribution alignment (the default; --no-align: FixMatch as "
                         "published): the teacher's probabilities are divided by their running mean over the pool "
                         "and renormalized, so that pseudo-labels stay spread evenly over the labeled classes "
                         "(against confirmation bias at 1-4 labels per class).", flag=True)
    strong_view: str = option("full", "With --unlabeled: FixMatch's strong view: full (twice --augment's geometry "
                              "and intensity ranges, a shear and a cutout) or geometry (the same without its "
                              "brightness and contrast changes: for texture-like images, patches or tiles of larger "
                              "photographs whose grey level names the class; on centred objects it cost 3-5 points).",
                              choices=STRONG_VIEWS)

    def __post_init__(self):
        for name in ("mu", "steps"):
            _positive(name, getattr(self, name))
        if not 0.0 < self.threshold <= 1.0:
            raise TransferError(f"threshold must be in (0, 1]. Received: threshold={self.threshold}")
        if self.unlabeled_weight < 0:
            raise TransferError(f"unlabeled_weight must be >= 0. Received: unlabeled_weight={self.unlabeled_weight}")
        _rate("semi_learning_rate", self.semi_learning_rate)
        _choice("teacher", self.teacher, ("inference", "batch"))
        _choice("strong_view", self.strong_view, STRONG_VIEWS)


@dataclass(frozen=True)
class FineTuneConfig(RunConfig):
    """Fit a dense head on an encoder for a labeled task; log one row.

    With a pretrained encoder its image size, channels and preprocessing are
    used (the --arch/--image-size options apply to --encoder random only).

    Writes: --out (a run directory: classifier.keras, manifest.json, history.csv,
    config.json, labeled.csv, confusion and mistakes; built in OUT.partial), one row in
    --results, --tensorboard logs. --overwrite replaces only a run directory.
    """

    encoder: str = option("random", "A pretrain run directory, or a baseline: random (with --freeze all|none), pixels "
                          "(logistic regression on raw pixels), or keras:NAME, an ImageNet backbone of "
                          f"keras.applications ({BACKBONES}).")
    weights: str | None = option(None, WEIGHTS_HELP, metavar="imagenet|PATH|none")
    freeze: str = option("none", "none (default): train everything with --augment (a pretrained encoder's head is "
                         "fit on its frozen features first; with --encoder random: from scratch); all: train only "
                         "the head on the frozen encoder (and --unfreeze-top K blocks after it).",
                         choices=("all", "none"))  # measured best on digits
    budget: BudgetConfig = section(BudgetConfig)
    test_data: str | None = option(None, "Separate labeled test set (default: a fixed split of --data).")
    test_fraction: float = option(DEFAULT_TEST_FRACTION, "Fraction of each class held out for testing; the split "
                                  "depends only on image content.")
    classifier: ClassifierConfig = section(ClassifierConfig)
    unfreeze_top: int = option(1, "With --freeze all: after the head is fit, train the top K conv blocks further "
                               "(BatchNorm stays frozen) at --fine-tune-learning-rate for --fine-tune-epochs.")
    fine_tune_learning_rate: float = option(1e-4, "Learning rate while the top blocks are unfrozen.")
    fine_tune_epochs: int = option(30, "Epochs while the top blocks are unfrozen.")
    epochs: int | None = option(None, "Epochs of a hidden-layer head, or of training with --freeze none (a linear "
                                "head needs none; default: 100, more when 100 passes over the labeled images make "
                                "fewer than 500 steps).")
    batch_size: int = option(32, "Labeled images per step.")
    learning_rate: float = option(1e-3, "Adam's learning rate for the head, or for everything with --freeze none.")
    augment: str = option("label-preserving", "Augmentation while training by gradient (not the exact linear solve): "
                          "label-preserving (small shifts, rotations, zooms, contrast, brightness; no flips), "
                          "orientation-free (also flips and any rotation: textures, tiles, micrographs) or none. "
                          "Never in the saved model.", choices=AUGMENT_POLICIES)
    unlabeled: str | None = option(None, "Unlabeled images (directory, CSV, prepared directory or built-in) to learn "
                                   "from too: semi-supervised fine-tuning by FixMatch, streamed. Method names get "
                                   "'-semi'.")
    fixmatch: FixMatchConfig = section(FixMatchConfig)
    # RunConfig's fields as fine-tune reads them
    data: str = option("", "Labeled images: class subfolders, path,label CSV or built-in.", required=True)
    image_size: int = option(32, "With --encoder random or keras:NAME only.")
    channels: int | None = option(None, "With --encoder random or keras:NAME only (default: from data).")
    seed: int = option(0, "Seed of the labeled draw and of training.")

    def __post_init__(self):
        super().__post_init__()
        _choice("augment", self.augment, AUGMENT_POLICIES)
        if self.unlabeled and self.encoder == "pixels":
            raise TransferError("--unlabeled needs an encoder to train (not --encoder pixels)")
        b = self.budget
        if b.select_readout is not None:  # unused by other selections (an experiment's grid mixes them)
            _readout(b.select_readout, b.select_encoder or self.encoder, "select-readout")
        for name in ("epochs", "batch_size", "fine_tune_epochs"):
            _positive(name, getattr(self, name))
        _positive("unfreeze_top", self.unfreeze_top, minimum=0)
        _choice("freeze", self.freeze, ("all", "none"))
        _readout(self.classifier.readout, self.encoder)
        _weights(self.encoder, self.weights)
        if not 0.0 < self.test_fraction < 1.0:
            raise TransferError(f"test_fraction must be between 0 and 1. Received: test_fraction={self.test_fraction}")
        _rate("learning_rate", self.learning_rate)
        _rate("fine_tune_learning_rate", self.fine_tune_learning_rate)


@dataclass(frozen=True)
class EvaluateConfig:
    """Score an encoder's features the standard way, beside raw pixels and a random encoder.

    Weighted 20-NN (cosine) and a linear probe with every pool label, and 1-NN / probe from
    1, 4 and 10 labels per class (random draws), on the test split; for each readout. One
    row per (features, readout), with the k-NN error as a ratio of the pixels' (below 1: better).

    Writes: rows in --results only.
    """

    encoder: str = option("", "A pretrain run directory, or keras:NAME (an ImageNet backbone, with --weights; its "
                          "random baseline is the same backbone with random weights).", required=True)
    weights: str | None = option(None, WEIGHTS_HELP, metavar="imagenet|PATH|none")
    image_size: int = option(32, "With --encoder keras:NAME only (a pretrain run brings its own).")
    data: str = option("", "Labeled images: class subfolders, path,label CSV or built-in.", required=True)
    test_data: str | None = option(None, "Separate labeled test set (default: the fixed test split of --data).")
    test_fraction: float = option(DEFAULT_TEST_FRACTION, "Fraction of each class held out when --data has no fixed "
                                  "split.")
    readouts: tuple[str, ...] = option(("avg", "multi", "stats", "projector"), "Readouts of the encoders to score "
                                       "(comma-separated: avg, multi, stats, flatten, projector; the default scores "
                                       "the projector when the encoder has a projection head).")
    baselines: bool = option(True, "Also score a random encoder of the same architecture and, for an --arch "
                             "encoder, the same architecture with k-means filters fitted on the pool's images in "
                             "seconds (pretrain --start kmeans; no label read). Raw pixels are always scored.",
                             flag=True)
    draws: int = option(5, "Random draws of the few labels per class.")
    seed: int = option(0, "Seed of the draws and of the random encoder.")
    results: str = option(RESULTS, "Results table to append the rows to.", path="file")
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
    """Choose which images of an unlabeled pool to label, before any label exists.

    Computes the features of every pool image in batches, then picks --labels images by
    --selection. Run it with --encoder pixels or random too: selection without pretraining is
    the baseline to compare with. One row in the results table (labeled_classes: how many
    classes the choice covers, when the pool's labels are known).

    Writes: --out (CSV path,label; paths relative to the CSV's folder, as every command
    reads them; with --format label-studio a task file, OUT.json, and its labeling config,
    OUT.xml), OUT.png and OUT.html (the contact sheet), one row in --results; existing
    files only with --overwrite, and only those select wrote.
    """

    data: str = option("", "The pool to choose from: directory, CSV manifest or built-in name.", required=True)
    encoder: str = option("", "A pretrain run directory, or a baseline: pixels (raw pixels), random (a random encoder "
                          "of --arch), keras:NAME (an ImageNet backbone, with --weights).", required=True)
    weights: str | None = option(None, WEIGHTS_HELP, metavar="imagenet|PATH|none")
    labels: int | None = option(None, "Required: how many images to label, in all (not per class), as "
                                "fine-tune's --labels.", was="budget")
    out: str = option("", "CSV to write (path,label in the order to label them); the contact sheet goes beside it "
                      "(.png, .html).", required=True, path="file")
    selection: str = option("typiclust", "typiclust: the most typical image of each k-means cluster of the features "
                           "(small budgets); probcover: greedy max coverage of balls of a radius where 95% of them "
                           "hold one k-means cluster; kcenter: greedy core-set, each image the farthest from those "
                           "chosen (larger budgets); random: uniform (the baseline); margin (with --model, the next "
                           "rounds): typiclust's clusters, from each the image the classifier is least sure of. As "
                           "fine-tune's --selection.", choices=(*SELECTIONS, *CLASSIFIER_SELECTIONS), was="strategy")
    purity: float | None = option(None, PURITY_HELP)  # None: transfer.selection.PURITY
    exclude: str | None = option(None, "Images already labeled (a CSV with a path column, e.g. an earlier --out): the "
                                 "next round.", metavar="CSV")
    labeled: bool = option(False, "The pool has labels (class subfolders or a label column; built-ins always): they "
                           "are written beside the chosen images, for simulations, and its test split is left out as "
                           "fine-tune leaves it.")
    readout: str = option("auto", READOUT_HELP, choices=READOUTS)
    image_size: int = option(32, "Image size for pixels and random (an encoder brings its own).")
    channels: int | None = option(None, CHANNELS_HELP)
    seed: int = option(0, "Seed of k-means, k-center's first image, random draws.")
    sheet: bool = option(True, "Write the contact sheet of the chosen images.", flag=True)
    model: str | None = option(None, "A fine-tune run directory: with --selection margin, its classifier's uncertainty "
                               "chooses the next round (typiclust's clusters, the least sure image of each).",
                               path="dir")
    format: str = option("csv", "csv: OUT is a path,label list. label-studio: OUT (.json) is a Label Studio task "
                         "file to import, with its labeling config beside it (.xml); fine-tune --data reads Label "
                         "Studio's export back.", choices=("csv", "label-studio"))
    classes: tuple[str, ...] = option((), "The classes to label with (--format label-studio; default: the pool's "
                                      "classes when it has labels).")
    overwrite: bool = option(False, "Replace an existing --out (and its contact sheet), if it is a list (and sheet) "
                             "that select wrote.")
    results: str = option(RESULTS, "Results table to append the row to.", path="file")
    experiment: str | None = None

    def __post_init__(self):
        if not self.encoder:
            raise TransferError("select needs an encoder: a pretrain run directory, pixels or random (--encoder)")
        if not self.out:
            raise TransferError("select needs the CSV to write (--out)")
        if self.labels is None:
            raise TransferError("select needs how many images to label (--labels N)")
        _positive("labels", self.labels)
        _positive("image_size", self.image_size)
        _positive("channels", self.channels)
        _choice("selection", self.selection, (*SELECTIONS, *CLASSIFIER_SELECTIONS))
        if (self.selection in CLASSIFIER_SELECTIONS) != bool(self.model):
            raise TransferError("--selection margin chooses by a trained classifier's uncertainty: give it --model RUN "
                                "(a fine-tune run directory)" if not self.model else
                                f"--model is for --selection margin (a classifier's uncertainty); --selection "
                                f"{self.selection} chooses by the features alone")
        _purity(self.purity, self.selection, "--selection")
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
    """Write the features of every image, with its path, content id and label.

    Streamed in batches (any source size); for TensorBoard's projector, a nearest-neighbour
    index, or finding near-duplicates and test images that also sit in a pool.

    Writes: --out (FILE.npy), FILE.csv beside it, FILE-duplicates.csv with --duplicates;
    existing ones only with --overwrite, and only files embed wrote.
    """

    encoder: str = option("", "A pretrain run directory, or pixels (raw pixels), or keras:NAME (an ImageNet backbone, "
                          "with --weights).", required=True)
    weights: str | None = option(None, WEIGHTS_HELP, metavar="imagenet|PATH|none")
    data: str = option("", "Images: directory, CSV manifest or built-in name.", required=True)
    out: str = option("", "FILE.npy for the features; FILE.csv (row,path,id,label[,neighbors,distances]) is written "
                      "beside it.", required=True, path="file")
    readout: str = option("auto", READOUT_HELP, choices=READOUTS)
    neighbors: int = option(0, "Add each image's K nearest neighbours (cosine) and distances.")
    duplicates: float | None = option(None, "Write FILE-duplicates.csv: every pair of images closer than cosine "
                                      "distance D (near-duplicates).", metavar="D")
    labeled: bool = option(False, "Read labels (class subfolders or a label column; built-ins always).")
    image_size: int = option(32, "Image size for pixels (an encoder brings its own).")
    channels: int | None = option(None, CHANNELS_HELP)
    overwrite: bool = option(False, "Replace existing files, if they are files that embed wrote.")

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
    """Export a fine-tuned classifier (or a pretrained encoder) for deployment.

    Through Keras's own Model.export; the exported model is run on 64 of the run's test
    images and must match the Keras model within 1e-4, or nothing is written. OUT.json says
    what to feed it (float32 images in [0, 1], preprocessed as `transfer predict` does) and
    records the check's max difference.

    Writes: --out (the model) and OUT.json (its record); an existing export only with
    --overwrite, and only one this command made (OUT.json names it).
    """

    run_dir: str = option("", "A fine-tune or pretrain run directory.", argument=True, metavar="RUN_DIR")
    format: str = option("savedmodel", "savedmodel (TensorFlow SavedModel folder), onnx (.onnx; needs tf2onnx and "
                         "onnxruntime), litert (.tflite; needs ai-edge-litert). Extra runtimes: pip install -e "
                         "\".[export]\".", choices=EXPORT_FORMATS)
    out: str | None = option(None, "Where to write it (default RUN_DIR/export/model[.onnx|.tflite]).", path="any")
    overwrite: bool = option(False, "Replace an existing export.")

    def __post_init__(self):
        _choice("format", self.format, EXPORT_FORMATS)


@dataclass(frozen=True)
class PrepareConfig:
    """Decode and resize SRC (a directory or CSV manifest) once into sharded TFRecord files.

    The prepared directory is a source for pretrain and fine-tune (same --image-size):
    no image is decoded again, and multiworker runs split its shards between workers.

    Writes: --out (a directory of shards and prepared.json).
    """

    src: str = option("", "A directory or CSV manifest of images.", argument=True, metavar="SRC")
    out: str = option("", "Directory to create.", required=True, path="dir")
    image_size: int = option(32, "Images are resized to this square size once.")
    channels: int | None = option(None, CHANNELS_HELP)
    labeled: bool = option(False, "Keep labels (class subfolders or the CSV's label column).")

    def __post_init__(self):
        for name in ("image_size", "channels"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class CompareConfig:
    """A headline per data set (where pretraining pays), then mean ± std over seeds per group
    and each method's difference from the best baseline.

    TABLES are results CSVs read as one (default: --results); the difference from the best
    method without pretraining is paired over the seeds both share, with a 95% interval.

    Writes: nothing but --plot (PNG) and --html (a page) when given, replacing only a
    picture or page of that kind.
    """

    tables: tuple[str, ...] = option((), "Results tables read as one.", argument=True, metavar="[TABLES]...",
                                     path="file")  # () -> (results,)
    results: str = option(RESULTS, "The results table to read when no TABLES are given.", path="file")
    by: tuple[str, ...] = option(("data", "method", "labels_per_class"), "Columns to group runs by (comma-separated; "
                                 "`table` is the table a row came from).")
    metric: str = option("test_accuracy", "Numeric column to compare.")
    # a row filter (transfer.rowfilter, checked when compare runs, before any table is read)
    where: str | None = option(None, "Keep only the rows matching this filter, e.g. \"arch == 'vgg' and seed < 3\": "
                               "column names, literals, comparisons, in [...], and/or/not, parentheses; nothing else "
                               "(no calls).")
    sort: str | None = option(None, "Sort the summary by this column (e.g. mean, vs_best_baseline, seconds).")
    descending: bool = option(False, "Sort from the largest value.")
    top: int | None = option(None, "Show only the first N rows of the summary.")
    columns: tuple[str, ...] = option((), "Summary columns to show (comma-separated; csv/json show them raw).")
    format: str = option("text", "Output format (csv and json keep raw numbers).",
                         choices=("text", "markdown", "csv", "json"))
    plot: str | None = option(None, "Also draw the label-efficiency plot (metric against labels per class, spread "
                              "over seeds shaded) to this PNG.", path="file")
    html: str | None = option(None, "Also write one self-contained HTML page (headline, verdicts, tables, plot, "
                              "costs, provenance).", path="file")
    verbose: bool = option(False, "Every verdict sentence (one per budget and selection), not only the headline.")

    def __post_init__(self):
        _choice("format", self.format, ("text", "markdown", "csv", "json"))
        _positive("top", self.top)


@dataclass(frozen=True)
class PredictConfig:
    """Classify images with a fine-tuned model: path, predicted class, probability of each class.

    Writes: --out (CSV); an existing one only with --overwrite, and only a prediction CSV.
    """

    model: str = option("", "A fine-tune run directory.", required=True)
    data: str = option("", "Images to classify: directory, CSV with a path column, or built-in.", required=True)
    out: str = option("predictions.csv", "CSV to write.", path="file")
    batch_size: int = option(256, "Images per prediction batch.")
    overwrite: bool = option(False, "Replace an existing output file.")

    def __post_init__(self):
        _positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class VisualizeConfig:
    """Show what a pretrained encoder learned: filters, images that activate chosen units,
    feature maps, and the run's reconstructions or samples, in RUN_DIR/visualize/index.html.

    Writes: in --out (default RUN_DIR/visualize), filters.png, activations.png,
    feature_maps.png and index.html, replacing only files of those kinds.
    """

    run_dir: str = option("", "A pretrain run directory.", argument=True, metavar="RUN_DIR", path="dir")
    out: str | None = option(None, "Folder for the PNGs and index.html (default RUN_DIR/visualize).", path="dir")
    layer: str | None = option(None, "Layer whose units to visualize (default: the top block's last activation).")
    units: tuple[int, ...] | None = option(None, "Channels of --layer to generate images for (default: the first 8).")
    image: str | None = option(None, "Image for the feature maps (default: the first pretraining image).",
                               path="file")

    def __post_init__(self):
        for u in self.units or ():
            _positive("units", u, minimum=0)


@dataclass(frozen=True)
class DemoConfig:
    """Pretrain on built-in digits, fine-tune it and the baseline, print the comparison (about 3 minutes).

    Writes: everything in --out (default runs/demo-TIME): runs and their results table.
    """

    out: str | None = option(None, "Directory for everything (default runs/demo-TIME).", path="dir")
    arch: str = "small"
    image_size: int = 16
    pretrain_epochs: int | None = option(80, "Pretraining epochs (pretrain's own default: 300 on digits).")
    fine_tune_epochs: int | None = option(None, "Default: fine-tune's default.")
    # few labels, the regime the toolkit is for: self-supervised features pay most at the fewest (1-2 per class)
    labels_per_class: tuple[int, ...] = option((2,), "Label budgets to compare.")
    seeds: tuple[int, ...] = option((0, 1, 2), "Seeds to repeat each fine-tune with.")

    def __post_init__(self):
        for name in ("image_size", "pretrain_epochs", "fine_tune_epochs"):
            _positive(name, getattr(self, name))
        for n in self.labels_per_class:
            _positive("labels_per_class", n)
        for s in self.seeds:
            _positive("seed", s, minimum=0)


@dataclass(frozen=True)
class ExperimentConfig:
    """Run the experiment FILE (TOML): methods x label budgets x seeds into one table.

    Each objective is pretrained once and reused; runs already in the table are
    skipped, so an interrupted experiment continues where it stopped. Ends with
    the compare table. See experiments/*.toml for examples.

    Paths in the file are relative to the file's folder. Writes: the file's results
    table (rows), its runs directory (encoders, fine-tunes), its TensorBoard logs when
    it names them; with --dry-run, nothing.
    """

    file: str = option("", "The experiment file (TOML; see pipelines/experiment.py for its keys).", argument=True,
                       metavar="FILE", path="file")
    dry_run: bool = option(False, "List what would run; train nothing.")


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """Parse a TOML file; a missing file or invalid TOML is a TransferError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise TransferError(f"{what} not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TransferError(f"{path}: not valid TOML ({exc})") from None


def renamed(cls, given: dict, warn) -> dict:
    """`given` options (field names) with a renamed field's old name (its `was`) replaced by its
    name; each old name used is said once through `warn`. Old names are read for one release."""
    old = {f.metadata["was"]: f.name for f, _ in option_fields(cls) if "was" in f.metadata}
    for key in given.keys() & old.keys():
        warn(f"--{key.replace('_', '-')} is now --{old[key].replace('_', '-')} (the old name goes after this "
             "release)")
    return {old.get(key, key): value for key, value in given.items()}


def load_toml(path: str | Path, cls, warn=lambda message: None) -> dict:
    """Read a TOML config file of `cls`'s options into {option name: value}; keys may use - or _,
    and a renamed option's old name (`renamed`); a section's options may sit in a table of its
    name (`[fixmatch]`) or at the top level.

    Raises:
        TransferError: unreadable file, invalid TOML, or a key that names no option.
    """
    allowed = {f.name for f, _ in option_fields(cls)}
    raw = renamed(cls, in_sections(read_toml(path), cls), warn)
    out = {}
    for name, value in raw.items():  # names with underscores already (`renamed` was given them so)
        if name not in allowed:
            raise TransferError(f"{path}: unknown option '{name}'. Known: {', '.join(sorted(allowed))}")
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


def in_sections(table: dict, cls) -> dict:
    """A TOML table of `cls`'s options by flat name (- or _), a section's table (e.g. `[fixmatch]`)
    read as its options."""
    out = {}
    for key, value in table.items():
        key = key.replace("-", "_")
        if isinstance(value, dict) and key in sections(cls):
            out.update(in_sections(value, sections(cls)[key]))
        else:
            out[key] = value
    return out


def check_section(section: dict, cls, where: str) -> None:
    """Every key of a TOML section (flat names) against the types of `cls`'s fields and sections'."""
    hints = {name: hint for name, (_, hint, _) in settable(cls).items()}
    for key, value in section.items():
        check_type(value, hints[key], key, where)
