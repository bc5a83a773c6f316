"""The `transfer` command line: options -> one config dataclass -> pipeline.run(cfg)."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
VERBOSE_ENV = "TRANSFER_VERBOSE"  # 1: show TensorFlow's own log lines and warnings (as --verbose)

import click  # noqa: E402


def _verbose() -> bool:
    import sys

    return ("--verbose" in sys.argv[1:2] or
            os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no"))


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow quietly unless --verbose (or TRANSFER_VERBOSE=1): its C++ log
    lines (oneDNN, CUDA, absl; at any level, set before the import), its Python logger
    and the library warnings Keras and TensorFlow raise are hidden, and so are the
    lines the import itself prints. If the import fails, what it printed is shown after all.
    """
    import sys
    import tempfile
    import warnings

    verbose = _verbose()
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # multiworker's gRPC chatter
        for module in ("keras", "tensorflow", "absl", "sklearn"):
            warnings.filterwarnings("ignore", module=module)
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import tensorflow  # noqa: F401

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


def _tensorflow() -> None:
    """What a command that trains or loads models runs first: TensorFlow imported quietly, and a
    Keras or TensorFlow outside the tested versions refused (transfer.internals fences the
    private surfaces it uses). `--help`, `compare` and the option checks import neither."""
    _import_tensorflow_quietly()
    from transfer import internals

    try:
        internals.check_versions()
    except TransferError as exc:
        raise UserError(str(exc)) from None


# Nothing here imports TensorFlow: the options' names come from transfer.vocabulary, and each
# command that needs TensorFlow imports it (quietly) as it starts.
from transfer.config import (  # noqa: E402
    CompareConfig,
    DemoConfig,
    EmbedConfig,
    EvaluateConfig,
    ExperimentConfig,
    ExportConfig,
    FineTuneConfig,
    PredictConfig,
    PrepareConfig,
    PretrainConfig,
    SelectConfig,
    VisualizeConfig,
    field_defaults,
    load_toml,
)
from transfer.errors import RunComplete, TransferError  # noqa: E402
from transfer.vocabulary import (  # noqa: E402
    AUGMENT_POLICIES,
    BUDGET_SELECTIONS,
    CLASSIFIER_SELECTIONS,
    BUILTINS,
    EXPORT_FORMATS,
    OBJECTIVES,
    PRECISIONS,
    PRESETS,
    READOUTS,
    SELECTIONS,
    STRATEGIES,
)


class UserError(click.ClickException):
    """One line on stderr, exit code 2, no traceback."""

    exit_code = 2


class RunFailed(click.ClickException):
    """A run that failed for a reason other than its input (e.g. a lost worker): one line, exit code 1."""

    exit_code = 1


class OneLineCommand(click.Command):
    """Usage errors print just `Error: ...` (one line); `--help` shows the usage."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            exc.ctx = None
            raise


class TransferGroup(click.Group):
    command_class = OneLineCommand


class IntList(click.ParamType):
    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(int(v) for v in value)
        try:
            items = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"expected comma-separated integers. Received: {value!r}", param, ctx)
        if not items:
            self.fail(f"expected comma-separated integers. Received: {value!r}", param, ctx)
        return items


class StrList(click.ParamType):
    name = "NAME[,NAME...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(str(v) for v in value)
        items = tuple(v.strip() for v in str(value).split(",") if v.strip())
        if not items:
            self.fail(f"expected comma-separated names. Received: {value!r}", param, ctx)
        return items


class HeadType(IntList):
    name = "linear|N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)) and not value or str(value).strip().lower() in ("linear", "", "0"):
            return ()
        return super().convert(value, param, ctx)


class LabelBudget(click.ParamType):
    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() == "all":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"expected a whole number or 'all'. Received: {value!r}", param, ctx)


def _config_callback(cls):
    allowed = {f.name for f in dataclasses.fields(cls)}

    def callback(ctx, param, value):
        if value:
            try:
                ctx.default_map = {**(ctx.default_map or {}), **load_toml(value, allowed)}
            except TransferError as exc:
                raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return callback


def config_option(cls):
    """Decorator: a `--config` option plus `opt` helpers defaulting to cls's field defaults."""

    def decorate(fn):
        return click.option(
            "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
            callback=_config_callback(cls),
            help="TOML file of option values (keys as option names); the command line wins.",
        )(fn)

    return decorate


def opt(cls, name, *args, **kwargs):
    """click.option whose default comes from the dataclass field `name` (dashes -> underscores)."""
    default = field_defaults(cls)[name.split("/")[0].replace("-", "_")]
    kwargs.setdefault("default", default)
    kwargs.setdefault("show_default", default not in (None, "", ()))
    return click.option(f"--{name}", *args, **kwargs)


def weights_option(cls, backbone: str = "--encoder keras:NAME"):
    """--weights: an ImageNet backbone's (transfer.backbones)."""
    return opt(cls, "weights", metavar="imagenet|PATH|none",
               help=f"With {backbone}: imagenet (fetched once by Keras into ~/.keras/models; needs the internet "
                    "the first time), a weights file of the backbone without its top, or none (random weights).")


def arch_options(cls):
    def decorate(fn):
        for o in reversed([
            opt(cls, "arch", type=click.Choice(PRESETS),
                help="Encoder preset: small (3 conv+BN+max-pool blocks), lenet5, vgg (2 convs per block), "
                     "resnet (residual units)."),
            opt(cls, "filters", type=IntList(), help="Filters per block, e.g. 32,64,128 (sets the number of blocks)."),
            opt(cls, "kernel-size", type=int, help="Kernel size of every conv (preset's if unset)."),
            opt(cls, "strides", type=int, help="Stride of each block's first conv."),
            opt(cls, "padding", type=click.Choice(["same", "valid"]), help="Conv padding."),
            opt(cls, "pool", type=click.Choice(["max", "avg", "none"]), help="Pooling after each block."),
            opt(cls, "batch-norm/--no-batch-norm", "batch_norm", help="BatchNorm after each conv."),
            opt(cls, "activation", type=str, help="Activation, e.g. relu, tanh, gelu."),
        ]):
            fn = o(fn)
        return fn

    return decorate


def speed_options(cls):
    """--precision and --xla (switches for GPUs: measured on CPU, both slow training down), and
    --tensorboard."""

    def decorate(fn):
        fn = opt(cls, "tensorboard", metavar="DIR", type=click.Path(file_okay=False),
                 help="Write TensorBoard logs under DIR/<run id>: every fit's losses, metrics and learning "
                      "rate, the preview images, and one HParams record with the run's final metrics "
                      "(tensorboard --logdir DIR).")(fn)
        fn = opt(cls, "xla/--no-xla", "xla",
                 help="Compile the training steps with XLA (jit_compile). Can help on GPUs; on CPU it made "
                      "training slower here (see README, Benchmarks).")(fn)
        return opt(cls, "precision", type=click.Choice(PRECISIONS),
                   help="mixed: compute in bfloat16 with float32 variables (Keras's mixed_bfloat16 policy) "
                        "for GPUs with bfloat16 (Ampere and later); the saved model keeps that policy. "
                        "On CPU it is slower.")(fn)

    return decorate


def _split(value) -> tuple[str, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return tuple(x.strip() for x in str(value).split(",") if x.strip())


class Console:
    """The pipelines' `log`: lines through click.echo; `terminal` (stdout is a TTY) asks long
    steps for Keras's progress bar instead of plain lines (see transfer.progress)."""

    def __init__(self):
        import sys

        self.terminal = sys.stdout.isatty()

    def __call__(self, message: str) -> None:
        click.echo(message)


def _run(pipeline, cls, params: dict):
    """Build the config and run. Bad input: one line, exit code 2. A lost worker: one line,
    exit code 1. Anything else: one line, exit code 1, the traceback saved to a log file
    (in the run's staging directory when there is one) that the line names."""
    import sys

    from transfer import stopping

    for prefix in ("transfer-decoded-", "transfer-worker-"):  # left by a process killed outright (SIGKILL)
        stopping.remove_stale(prefix)
    try:
        cfg = cls(**params)
        with stopping.handled():  # SIGINT, SIGTERM, SIGHUP: one line, staging kept, exit 128 + signal
            return pipeline.run(cfg, log=Console())
    except stopping.Stopped as exc:
        _end_after_stop(exc)
    except RunComplete as exc:
        click.echo(str(exc))
        return None
    except TransferError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # a bug or an environment failure: never a traceback on the terminal
        distribute = sys.modules.get("transfer.distribute")  # loaded by every run that can lose a peer
        if distribute is not None and isinstance(exc, distribute.WorkerFailed):
            _end_after_lost_peer(str(exc))
        log = _save_traceback(exc)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunFailed(f"{type(exc).__name__}{': ' + text[:300] if text else ''} "
                        f"(the full traceback is in {log})") from None


def _end_after_stop(exc) -> None:
    """One line: what stopped the run, what was kept, how to go on; exit 128 + the signal."""
    staging = getattr(exc, "staging", None)
    kept = f"; its partial run is kept in {staging}" if staging else ""
    click.echo(f"Stopped by {exc.name}{kept}: run the same command again to resume.", err=True)
    raise click.exceptions.Exit(exc.exit_code)


def _end_after_lost_peer(message: str) -> None:
    """Print the one line and end the process at once, exit code 1. TensorFlow cannot tear
    down a cluster that lost a peer: at interpreter exit its destructors wait for the dead
    worker (seen hanging indefinitely in garbage collection, after the message was printed),
    so the process skips them. Everything the run wrote is already closed or flushed."""
    import sys

    click.echo(f"Error: {message}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    _hard_exit(RunFailed.exit_code)


_hard_exit = os._exit  # replaced in tests that run the CLI in-process


def _save_traceback(exc: BaseException) -> str:
    """Write the traceback to error-<time>.log in the run's staging directory, else a temp file."""
    import tempfile
    import time
    import traceback

    text = "".join(traceback.format_exception(exc))
    folder = getattr(exc, "staging", None)
    if folder:
        path = os.path.join(folder, f"error-{time.strftime('%Y%m%d-%H%M%S')}.log")
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:  # the staging directory went away: a temp file after all
            pass
    fd, path = tempfile.mkstemp(prefix="transfer-error-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@click.group(cls=TransferGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="transfer")
@click.option("--verbose", is_flag=True, help=f"Show TensorFlow's own log lines and warnings (or {VERBOSE_ENV}=1).")
def main(verbose: bool):
    """Pretrain convolutional layers on unlabeled images, reuse them on labeled tasks, compare runs.

    Typical use: `transfer pretrain --data UNLABELED --out runs/enc`, then
    `transfer fine-tune --data LABELED --encoder runs/enc --labels-per-class 10`
    (and the baselines `--encoder random --freeze all|none`), then `transfer compare`.
    Every run appends one row to the results table (default experiments/results.csv).

    SRC is a directory of images (for labeled data: one subfolder per class), a CSV
    manifest with columns path[,label], or a built-in name: """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


main.help += ", ".join(BUILTINS) + "."


@main.command()
@config_option(PretrainConfig)
@opt(PretrainConfig, "data", required=True, help="Unlabeled images: directory, CSV manifest or built-in name.")
@opt(PretrainConfig, "out", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@opt(PretrainConfig, "objective", type=click.Choice(OBJECTIVES), help="Pretraining objective.")
@arch_options(PretrainConfig)
@opt(PretrainConfig, "init", metavar="keras:NAME",
     help="Continue from an ImageNet backbone of keras.applications (MobileNetV3Small, MobileNetV3Large, "
          "EfficientNetB0, EfficientNetV2B0, ResNet50V2, ConvNeXtTiny; with --weights) instead of the --arch "
          "encoder: domain-adaptive pretraining on these images, saved as an ordinary encoder.")
@weights_option(PretrainConfig, "--init")
@opt(PretrainConfig, "image-size", type=int, help="Images are resized to this square size.")
@opt(PretrainConfig, "channels", type=int, help="Channels (default: 1 if all images are gray, else 3).")
@opt(PretrainConfig, "epochs", type=int,
     help="Passes over the unlabeled images (default: 300, or as many as train on 500,000 images in all when "
          "the pool is larger than about 1,700: a bounded default cost).")
@opt(PretrainConfig, "batch-size", type=int,
     help="Images per step (contrastive: also the number of negatives each image is contrasted with).")
@opt(PretrainConfig, "learning-rate", type=float,
     help="Adam's learning rate (default: the objective's own: 1e-3, gan 2e-4).")
@opt(PretrainConfig, "temperature", type=float,
     help="contrastive: the softmax temperature of NT-Xent (default 0.3).")
@opt(PretrainConfig, "projector", type=IntList(),
     help="contrastive, vicreg, byol: widths of the projection MLP dropped after pretraining "
          "(default 128,64; vicreg 512,512,512; byol 512,128).")
@opt(PretrainConfig, "crop", type=float,
     help="contrastive, vicreg, byol: the smallest side of a view's random crop, as a fraction of the image's "
          "(default 0.7).")
@opt(PretrainConfig, "blur", type=float, help="contrastive, vicreg, byol: the strength of the views' random "
     "Gaussian blur, 0 to 1 (default 0.5; 0: none).")
@opt(PretrainConfig, "jitter", type=float, help="contrastive, vicreg, byol: the strength of the views' random "
     "brightness and contrast jitter, 0 to 1 (default 1: brightness +-0.3, contrast x0.4-1.6; 0: none).")
@opt(PretrainConfig, "seed", type=int, help="Seed of initialization, shuffling and augmentation.")
@opt(PretrainConfig, "results", type=click.Path(dir_okay=False), help="Results table to append to.")
@opt(PretrainConfig, "overwrite", is_flag=True,
     help="Replace an existing run directory (an interrupted run of the same configuration still resumes).")
@opt(PretrainConfig, "plots/--no-plots", "plots",
     help="Write the preview PNG (reconstructions, views or samples) and the visualize/ report.")
@opt(PretrainConfig, "probe-data", metavar="LABELED",
     help="Labeled images to watch the features with while pretraining: a k-NN probe's accuracy every few "
          "epochs (column probe_knn; images outside the source's test split; nothing is trained on them).")
@opt(PretrainConfig, "strategy", type=click.Choice(STRATEGIES),
     help="tf.distribute strategy: one device, mirrored (this machine's GPUs), multiworker (machines "
          "listed in TF_CONFIG; only worker 0 writes), auto (multiworker if TF_CONFIG lists several "
          "workers, mirrored if several GPUs, else one).")
@speed_options(PretrainConfig)
def pretrain(**params):
    """Pretrain an encoder on unlabeled images (SRC labels are ignored).

    Reports the reconstruction error next to trivial baselines.

    Writes: --out (a run directory: encoder.keras, manifest.json, history.csv,
    config.json, previews; built in OUT.partial, moved into place when complete), one
    row in --results, --tensorboard logs. --overwrite replaces only a run directory.
    """
    _tensorflow()
    from pipelines import pretrain as pipeline

    _run(pipeline, PretrainConfig, params)


@main.command("fine-tune")
@config_option(FineTuneConfig)
@opt(FineTuneConfig, "data", required=True, help="Labeled images: class subfolders, path,label CSV or built-in.")
@opt(FineTuneConfig, "encoder", help="A pretrain run directory, or a baseline: random (with --freeze all|none), pixels (logistic regression on raw pixels), or keras:NAME, an ImageNet backbone of keras.applications (MobileNetV3Small, MobileNetV3Large, EfficientNetB0, EfficientNetV2B0, ResNet50V2, ConvNeXtTiny; with --weights).")
@weights_option(FineTuneConfig)
@opt(FineTuneConfig, "freeze", type=click.Choice(["all", "none"]),
     help="none (default): train everything with --augment (a pretrained encoder's head is fit on its "
          "frozen features first; with --encoder random: from scratch); all: train only the head on the "
          "frozen encoder (and --unfreeze-top K blocks after it).")
@opt(FineTuneConfig, "labels-per-class", type=LabelBudget(),
     help="Labeled training images per class, or 'all' (a stratified draw: the oracle a user with an "
          "unlabeled pool cannot make; see --labels).")
@opt(FineTuneConfig, "labels", type=int,
     help="A total label budget instead: N images of the pool, chosen by --selection (a class may get none).")
@opt(FineTuneConfig, "selection", type=click.Choice(BUDGET_SELECTIONS),
     help="How the --labels images are chosen: random (default: a blind draw, as users label), stratified "
          "(N / classes of each: the oracle), typiclust, probcover or kcenter (by features, before any label: see "
          "transfer select).")
@opt(FineTuneConfig, "select-encoder",
     help="Features for --selection typiclust|probcover|kcenter: a pretrain run directory, or pixels "
          "(default: --encoder when it is pretrained, else pixels).")
@opt(FineTuneConfig, "select-readout", type=click.Choice(READOUTS),
     help="The select encoder's readout for --selection (default auto: through its projection head when it "
          "has one, as transfer select; avg: the global average pool of its last block).")
@opt(FineTuneConfig, "purity", type=float,
     help="--selection probcover: the share of balls holding one k-means cluster that sets the radius "
          "(default 0.95, the authors'; lower: wider balls, fewer images in the densest regions).")
@opt(FineTuneConfig, "test-data", help="Separate labeled test set (default: a fixed split of --data).")
@opt(FineTuneConfig, "test-fraction", type=float,
     help="Fraction of each class held out for testing; the split depends only on image content.")
@opt(FineTuneConfig, "readout", type=click.Choice(READOUTS),
     help="Features fed to the head: avg (global average pool of the last block), multi (average pool "
          "of every block), stats (per-channel mean and mean square of every block: orderless, for "
          "textures), flatten, projector (avg through the projection head a two-view objective saved "
          "beside the encoder), or auto: projector when the encoder has a head, else the one of "
          "avg/multi/stats whose linear probe cross-validates best on the labeled images (avg for scratch).")
@opt(FineTuneConfig, "adapt-bn", is_flag=True,
     help="Re-estimate the encoder's BatchNorm statistics on the target images first (AdaBN; the labeled "
          "images and up to 2,048 of --unlabeled): for labeled data unlike the pretraining data.")
@opt(FineTuneConfig, "head", type=HeadType(), default="linear", show_default=True,
     help="linear: a softmax layer on standardized features, solved exactly (L-BFGS, L2) when the encoder "
          "is frozen; or hidden units, e.g. 128 or 256,64, trained by Adam for --epochs.")
@opt(FineTuneConfig, "dropout", type=float, help="Dropout in a head with hidden layers.")
@opt(FineTuneConfig, "unfreeze-top", type=int,
     help="With --freeze all: after the head is fit, train the top K conv blocks further "
          "(BatchNorm stays frozen) at --fine-tune-learning-rate for --fine-tune-epochs.")
@opt(FineTuneConfig, "fine-tune-learning-rate", type=float,
     help="Learning rate while the top blocks are unfrozen.")
@opt(FineTuneConfig, "fine-tune-epochs", type=int, help="Epochs while the top blocks are unfrozen.")
@opt(FineTuneConfig, "epochs", type=int,
     help="Epochs of a hidden-layer head, or of training with --freeze none (a linear head needs none; "
          "default: 100, more when 100 passes over the labeled images make fewer than 500 steps).")
@opt(FineTuneConfig, "batch-size", type=int, help="Labeled images per step.")
@opt(FineTuneConfig, "learning-rate", type=float,
     help="Adam's learning rate for the head, or for everything with --freeze none.")
@opt(FineTuneConfig, "augment", type=click.Choice(AUGMENT_POLICIES),
     help="Augmentation while training by gradient (not the exact linear solve): label-preserving "
          "(small shifts, rotations, zooms, contrast, brightness; no flips), orientation-free (also "
          "flips and any rotation: textures, tiles, micrographs) or none. Never in the saved model.")
@opt(FineTuneConfig, "unlabeled",
     help="Unlabeled images (directory, CSV, prepared directory or built-in) to learn from too: "
          "semi-supervised fine-tuning by FixMatch, streamed. Method names get '-semi'.")
@opt(FineTuneConfig, "mu", type=int, help="With --unlabeled: unlabeled images per labeled image in a step.")
@opt(FineTuneConfig, "threshold", type=float,
     help="With --unlabeled: confidence above which a prediction becomes a pseudo-label.")
@opt(FineTuneConfig, "unlabeled-weight", type=float, help="With --unlabeled: weight of the unlabeled loss.")
@opt(FineTuneConfig, "steps", type=int, help="With --unlabeled: training steps.")
@opt(FineTuneConfig, "semi-learning-rate", type=float,
     help="With --unlabeled: FixMatch's learning rate (SGD with Nesterov momentum and weight decay, "
          "FixMatch's cosine, the weights' moving average kept, as the reference trains).")
@opt(FineTuneConfig, "teacher", type=click.Choice(["inference", "batch"]),
     help="With --unlabeled: where pseudo-labels come from: inference (the network in inference mode, "
          "BatchNorm's moving statistics, no backward pass for them: cheaper) or batch (the reference: "
          "the weak views in the trained pass with the labeled and strong ones).")
@opt(FineTuneConfig, "align/--no-align", "align",
     help="With --unlabeled: distribution alignment (the default; --no-align: FixMatch as published): "
          "the teacher's probabilities are divided by "
          "their running mean over the pool and renormalized, so that pseudo-labels stay spread "
          "evenly over the labeled classes (against confirmation bias at 1-4 labels per class).")
@opt(FineTuneConfig, "seed", type=int, help="Seed of the labeled draw and of training.")
@arch_options(FineTuneConfig)
@opt(FineTuneConfig, "image-size", type=int, help="With --encoder random or keras:NAME only.")
@opt(FineTuneConfig, "channels", type=int, help="With --encoder random or keras:NAME only (default: from data).")
@opt(FineTuneConfig, "out", type=click.Path(file_okay=False), help="Run directory (default runs/RUN_ID).")
@opt(FineTuneConfig, "results", type=click.Path(dir_okay=False), help="Results table to append to.")
@opt(FineTuneConfig, "overwrite", is_flag=True,
     help="Replace an existing run directory (an interrupted run of the same configuration still resumes).")
@opt(FineTuneConfig, "strategy", type=click.Choice(STRATEGIES),
     help="tf.distribute strategy: one device, mirrored (this machine's GPUs), multiworker (machines "
          "listed in TF_CONFIG; only worker 0 writes), auto (multiworker if TF_CONFIG lists several "
          "workers, mirrored if several GPUs, else one).")
@speed_options(FineTuneConfig)
def fine_tune(**params):
    """Fit a dense head on an encoder for a labeled task; log one row.

    With a pretrained encoder its image size, channels and preprocessing are
    used (the --arch/--image-size options apply to --encoder random only).

    Writes: --out (a run directory: classifier.keras, manifest.json, history.csv,
    config.json, labeled.csv, confusion and mistakes; built in OUT.partial), one row in
    --results, --tensorboard logs. --overwrite replaces only a run directory.
    """
    _tensorflow()
    from pipelines import fine_tune as pipeline

    _run(pipeline, FineTuneConfig, params)


@main.command()
@config_option(EvaluateConfig)
@opt(EvaluateConfig, "encoder", required=True,
     help="A pretrain run directory, or keras:NAME (an ImageNet backbone, with --weights; its random baseline is "
          "the same backbone with random weights).")
@weights_option(EvaluateConfig)
@opt(EvaluateConfig, "image-size", type=int, help="With --encoder keras:NAME only (a pretrain run brings its own).")
@opt(EvaluateConfig, "data", required=True, help="Labeled images: class subfolders, path,label CSV or built-in.")
@opt(EvaluateConfig, "test-data", help="Separate labeled test set (default: the fixed test split of --data).")
@opt(EvaluateConfig, "test-fraction", type=float, help="Fraction of each class held out when --data has no fixed split.")
@opt(EvaluateConfig, "readouts", type=str, default=",".join(EvaluateConfig.readouts),
     callback=lambda c, p, v: _split(v),
     help="Readouts of the encoders to score (comma-separated: avg, multi, stats, flatten, projector; the default "
          "scores the projector when the encoder has a projection head).")
@opt(EvaluateConfig, "baselines/--no-baselines", "baselines",
     help="Also score a random encoder of the same architecture (raw pixels are always scored).")
@opt(EvaluateConfig, "draws", type=int, help="Random draws of the few labels per class.")
@opt(EvaluateConfig, "seed", type=int, help="Seed of the draws and of the random encoder.")
@opt(EvaluateConfig, "results", type=click.Path(dir_okay=False), help="Results table to append the rows to.")
def evaluate(**params):
    """Score an encoder's features the standard way, beside raw pixels and a random encoder.

    Weighted 20-NN (cosine) and a linear probe with every pool label, and 1-NN / probe from
    1, 4 and 10 labels per class (random draws), on the test split; for each readout. One
    row per (features, readout), with the k-NN error as a ratio of the pixels' (below 1: better).

    Writes: rows in --results only.
    """
    _tensorflow()
    from pipelines import evaluate as pipeline

    _run(pipeline, EvaluateConfig, params)


@main.command()
@config_option(EmbedConfig)
@opt(EmbedConfig, "encoder", required=True,
     help="A pretrain run directory, or pixels (raw pixels), or keras:NAME (an ImageNet backbone, with --weights).")
@weights_option(EmbedConfig)
@opt(EmbedConfig, "data", required=True, help="Images: directory, CSV manifest or built-in name.")
@opt(EmbedConfig, "out", required=True, type=click.Path(dir_okay=False),
     help="FILE.npy for the features; FILE.csv (row,path,id,label[,neighbors,distances]) is written beside it.")
@opt(EmbedConfig, "readout", type=click.Choice(READOUTS),
     help="How the encoder's last block becomes one feature vector. auto (default): what its fine-tunes and "
          "selections read, through its projection head when it has one (the two-view objectives), else avg.")
@opt(EmbedConfig, "neighbors", type=int, help="Add each image's K nearest neighbours (cosine) and distances.")
@opt(EmbedConfig, "duplicates", type=float, metavar="D",
     help="Write FILE-duplicates.csv: every pair of images closer than cosine distance D (near-duplicates).")
@opt(EmbedConfig, "labeled", is_flag=True, help="Read labels (class subfolders or a label column; built-ins always).")
@opt(EmbedConfig, "image-size", type=int, help="Image size for pixels (an encoder brings its own).")
@opt(EmbedConfig, "channels", type=int, help="Channels (default: 1 if all images are gray, else 3).")
@opt(EmbedConfig, "overwrite", is_flag=True, help="Replace existing files, if they are files that embed wrote.")
def embed(**params):
    """Write the features of every image, with its path, content id and label.

    Streamed in batches (any source size); for TensorBoard's projector, a nearest-neighbour
    index, or finding near-duplicates and test images that also sit in a pool.

    Writes: --out (FILE.npy), FILE.csv beside it, FILE-duplicates.csv with --duplicates;
    existing ones only with --overwrite, and only files embed wrote.
    """
    _tensorflow()
    from pipelines import embed as pipeline

    _run(pipeline, EmbedConfig, params)


@main.command("export")
@click.argument("run_dir", metavar="RUN_DIR")
@opt(ExportConfig, "format", type=click.Choice(list(EXPORT_FORMATS)),
     help="savedmodel (TensorFlow SavedModel folder), onnx (.onnx; needs tf2onnx and onnxruntime), litert "
          "(.tflite; needs ai-edge-litert). Extra runtimes: pip install -e \".[export]\".")
@opt(ExportConfig, "out", type=click.Path(), help="Where to write it (default RUN_DIR/export/model[.onnx|.tflite]).")
@opt(ExportConfig, "overwrite", is_flag=True, help="Replace an existing export.")
def export_command(**params):
    """Export a fine-tuned classifier (or a pretrained encoder) for deployment.

    Through Keras's own Model.export; the exported model is run on 64 of the run's test
    images and must match the Keras model within 1e-4, or nothing is written. OUT.json says
    what to feed it (float32 images in [0, 1], preprocessed as `transfer predict` does) and
    records the check's max difference.

    Writes: --out (the model) and OUT.json (its record); an existing export only with
    --overwrite, and only one this command made (OUT.json names it).
    """
    _tensorflow()
    from pipelines import export as pipeline

    _run(pipeline, ExportConfig, params)


@main.command("select")
@config_option(SelectConfig)
@opt(SelectConfig, "data", required=True, help="The pool to choose from: directory, CSV manifest or built-in name.")
@opt(SelectConfig, "encoder", required=True,
     help="A pretrain run directory, or a baseline: pixels (raw pixels), random (a random encoder of --arch), "
          "keras:NAME (an ImageNet backbone, with --weights).")
@weights_option(SelectConfig)
@opt(SelectConfig, "budget", type=int, required=True, help="How many images to label (in all, not per class).")
@opt(SelectConfig, "out", required=True, type=click.Path(dir_okay=False),
     help="CSV to write (path,label in the order to label them); the contact sheet goes beside it (.png, .html).")
@opt(SelectConfig, "strategy", type=click.Choice((*SELECTIONS, *CLASSIFIER_SELECTIONS)),
     help="typiclust: the most typical image of each k-means cluster of the features (small budgets); "
          "probcover: greedy max coverage of balls of a radius where 95% of them hold one k-means cluster; "
          "kcenter: greedy core-set, each image the farthest from those chosen (larger budgets); "
          "random: uniform (the baseline); margin (with --model, the next rounds): typiclust's clusters, from "
          "each the image the classifier is least sure of.")
@opt(SelectConfig, "purity", type=float,
     help="probcover: the share of balls holding one k-means cluster that sets the radius (default 0.95, "
          "the authors'; lower: wider balls, fewer images in the densest regions).")
@opt(SelectConfig, "exclude", metavar="CSV",
     help="Images already labeled (a CSV with a path column, e.g. an earlier --out): the next round.")
@opt(SelectConfig, "labeled", is_flag=True,
     help="The pool has labels (class subfolders or a label column; built-ins always): they are written "
          "beside the chosen images, for simulations, and its test split is left out as fine-tune leaves it.")
@opt(SelectConfig, "readout", type=click.Choice(READOUTS),
     help="How the encoder's last block becomes one feature vector. auto (default): what its fine-tunes "
          "read, through its projection head when it has one (the two-view objectives), else avg.")
@opt(SelectConfig, "image-size", type=int, help="Image size for pixels and random (an encoder brings its own).")
@opt(SelectConfig, "channels", type=int, help="Channels (default: 1 if all images are gray, else 3).")
@arch_options(SelectConfig)
@opt(SelectConfig, "seed", type=int, help="Seed of k-means, k-center's first image, random draws.")
@opt(SelectConfig, "sheet/--no-sheet", "sheet", help="Write the contact sheet of the chosen images.")
@opt(SelectConfig, "model", type=click.Path(file_okay=False), help="A fine-tune run directory: with --strategy "
     "margin, its classifier's uncertainty chooses the next round (typiclust's clusters, the least sure image of each).")
@opt(SelectConfig, "format", type=click.Choice(["csv", "label-studio"]),
     help="csv: OUT is a path,label list. label-studio: OUT (.json) is a Label Studio task file to import, with "
          "its labeling config beside it (.xml); fine-tune --data reads Label Studio's export back.")
@opt(SelectConfig, "classes", type=StrList(), help="The classes to label with (--format label-studio; default: "
     "the pool's classes when it has labels).")
@opt(SelectConfig, "overwrite", is_flag=True,
     help="Replace an existing --out (and its contact sheet), if it is a list (and sheet) that select wrote.")
@opt(SelectConfig, "results", type=click.Path(dir_okay=False), help="Results table to append the row to.")
def select(**params):
    """Choose which images of an unlabeled pool to label, before any label exists.

    Computes the features of every pool image in batches, then picks --budget images by
    --strategy. Run it with --encoder pixels or random too: selection without pretraining is
    the baseline to compare with. One row in the results table (labeled_classes: how many
    classes the choice covers, when the pool's labels are known).

    Writes: --out (CSV path,label; paths relative to the CSV's folder, as every command
    reads them; with --format label-studio a task file, OUT.json, and its labeling config,
    OUT.xml), OUT.png and OUT.html (the contact sheet), one row in --results; existing
    files only with --overwrite, and only those select wrote.
    """
    _tensorflow()
    from pipelines import select as pipeline

    _run(pipeline, SelectConfig, params)


@main.command()
@click.argument("src")
@opt(PrepareConfig, "out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@opt(PrepareConfig, "image-size", type=int, help="Images are resized to this square size once.")
@opt(PrepareConfig, "channels", type=int, help="Channels (default: 1 if all images are gray, else 3).")
@opt(PrepareConfig, "labeled", is_flag=True, help="Keep labels (class subfolders or the CSV's label column).")
def prepare(**params):
    """Decode and resize SRC (a directory or CSV manifest) once into sharded TFRecord files.

    The prepared directory is a source for pretrain and fine-tune (same --image-size):
    no image is decoded again, and multiworker runs split its shards between workers.

    Writes: --out (a directory of shards and prepared.json).
    """
    _tensorflow()
    from pipelines import prepare as pipeline

    _run(pipeline, PrepareConfig, params)


@main.command()
@config_option(CompareConfig)
@click.argument("tables", nargs=-1, type=click.Path(dir_okay=False))
@opt(CompareConfig, "results", type=click.Path(dir_okay=False), help="The results table to read when no TABLES are given.")
@opt(CompareConfig, "by", type=str, default=",".join(CompareConfig.by), callback=lambda c, p, v: _split(v),
     help="Columns to group runs by (comma-separated; `table` is the table a row came from).")
@opt(CompareConfig, "metric", help="Numeric column to compare.")
@opt(CompareConfig, "where", help="Keep only the rows matching this filter, e.g. \"arch == 'vgg' and seed < 3\": column names, "
          "literals, comparisons, in [...], and/or/not, parentheses; nothing else (no calls).")
@opt(CompareConfig, "sort", help="Sort the summary by this column (e.g. mean, vs_best_baseline, seconds).")
@opt(CompareConfig, "descending", is_flag=True, help="Sort from the largest value.")
@opt(CompareConfig, "top", type=int, help="Show only the first N rows of the summary.")
@opt(CompareConfig, "columns", type=str, default="", callback=lambda c, p, v: _split(v),
     help="Summary columns to show (comma-separated; csv/json show them raw).")
@opt(CompareConfig, "format", type=click.Choice(["text", "markdown", "csv", "json"]),
     help="Output format (csv and json keep raw numbers).")
@opt(CompareConfig, "plot", type=click.Path(dir_okay=False),
     help="Also draw the label-efficiency plot (metric against labels per class, spread over seeds shaded) to this PNG.")
@opt(CompareConfig, "html", type=click.Path(dir_okay=False),
     help="Also write one self-contained HTML page (headline, verdicts, tables, plot, costs, provenance).")
@opt(CompareConfig, "verbose", is_flag=True, help="Every verdict sentence (one per budget and selection), "
     "not only the headline.")
def compare(**params):
    """A headline per data set (where pretraining pays), then mean ± std over seeds per group
    and each method's difference from the best baseline.

    TABLES are results CSVs read as one (default: --results); the difference from the best
    method without pretraining is paired over the seeds both share, with a 95% interval.

    Writes: nothing but --plot (PNG) and --html (a page) when given, replacing only a
    picture or page of that kind.
    """
    from pipelines import compare as pipeline

    _run(pipeline, CompareConfig, params)


@main.command()
@config_option(PredictConfig)
@opt(PredictConfig, "model", required=True, help="A fine-tune run directory.")
@opt(PredictConfig, "data", required=True, help="Images to classify: directory, CSV with a path column, or built-in.")
@opt(PredictConfig, "out", type=click.Path(dir_okay=False), help="CSV to write.")
@opt(PredictConfig, "batch-size", type=int, help="Images per prediction batch.")
@opt(PredictConfig, "overwrite", is_flag=True, help="Replace an existing output file.")
def predict(**params):
    """Classify images with a fine-tuned model: path, predicted class, probability of each class.

    Writes: --out (CSV); an existing one only with --overwrite, and only a prediction CSV.
    """
    _tensorflow()
    from pipelines import predict as pipeline

    _run(pipeline, PredictConfig, params)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@opt(VisualizeConfig, "out", type=click.Path(file_okay=False), help="Folder for the PNGs and index.html (default RUN_DIR/visualize).")
@opt(VisualizeConfig, "layer", help="Layer whose units to visualize (default: the top block's last activation).")
@opt(VisualizeConfig, "units", type=IntList(), help="Channels of --layer to generate images for "
     "(default: the first 8).")
@opt(VisualizeConfig, "image", type=click.Path(dir_okay=False), help="Image for the feature maps (default: the first pretraining image).")
def visualize(**params):
    """Show what a pretrained encoder learned: filters, images that activate chosen units,
    feature maps, and the run's reconstructions or samples, in RUN_DIR/visualize/index.html.

    Writes: in --out (default RUN_DIR/visualize), filters.png, activations.png,
    feature_maps.png and index.html, replacing only files of those kinds.
    """
    _tensorflow()
    from pipelines import visualize as pipeline

    _run(pipeline, VisualizeConfig, params)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="List what would run; train nothing.")
def experiment(file, dry_run):
    """Run the experiment FILE (TOML): methods x label budgets x seeds into one table.

    Each objective is pretrained once and reused; runs already in the table are
    skipped, so an interrupted experiment continues where it stopped. Ends with
    the compare table. See experiments/*.toml for examples.

    Paths in the file are relative to the file's folder. Writes: the file's results
    table (rows), its runs directory (encoders, fine-tunes), its TensorBoard logs when
    it names them; with --dry-run, nothing.
    """
    _tensorflow()
    from pipelines import experiment as pipeline

    _run(pipeline, ExperimentConfig, {"file": file, "dry_run": dry_run})


@main.command()
@opt(DemoConfig, "out", type=click.Path(file_okay=False), help="Directory for everything (default runs/demo-TIME).")
@opt(DemoConfig, "pretrain-epochs", type=int, help="Pretraining epochs (pretrain's own default: 300 on digits).")
@opt(DemoConfig, "fine-tune-epochs", type=int, help="Default: fine-tune's default.")
@opt(DemoConfig, "labels-per-class", type=IntList(), default=",".join(map(str, DemoConfig.labels_per_class)),
     help="Label budgets to compare.")
@opt(DemoConfig, "seeds", type=IntList(), help="Seeds to repeat each fine-tune with.",
     default=",".join(map(str, DemoConfig.seeds)))
def demo(**params):
    """Pretrain on built-in digits, fine-tune it and the baseline, print the comparison (about 3 minutes).

    Writes: everything in --out (default runs/demo-TIME): runs and their results table.
    """
    _tensorflow()
    from pipelines import demo as pipeline

    _run(pipeline, DemoConfig, params)


if __name__ == "__main__":
    main()
