"""The `transfer` command line: options -> one config dataclass -> pipeline.run(cfg)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Nothing here imports TensorFlow: the options come from the config dataclasses (transfer.config,
# which reads names from transfer.vocabulary), and each command that needs TensorFlow imports it
# (quietly) as it starts.
import click  # noqa: E402

from transfer import config, quiet  # noqa: E402
from transfer.config import load_toml  # noqa: E402
from transfer.errors import RunComplete, TransferError, save_traceback  # noqa: E402
from transfer.vocabulary import BUILTINS  # noqa: E402


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


class ListOf(click.ParamType):
    """Comma-separated whole numbers (N[,N...]) or names (NAME[,NAME...])."""

    def __init__(self, item: type):
        self.item, self.name = item, "N[,N...]" if item is int else "NAME[,NAME...]"

    def convert(self, value, param, ctx):
        values = value if isinstance(value, (tuple, list)) else str(value).split(",")
        try:
            items = tuple(self.item(str(v).strip()) for v in values if str(v).strip())
        except ValueError:
            items = ()
        if not items:
            self.fail(f"expected comma-separated {'integers' if self.item is int else 'names'}. Received: {value!r}",
                      param, ctx)
        return items


class HeadType(ListOf):
    """A head: linear, or hidden units N[,N...]."""

    def __init__(self):
        super().__init__(int)
        self.name = "linear|N[,N...]"

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


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def config_option(cls):
    """The `--config FILE.toml` option: its values become the other options' defaults (the command line wins)."""

    def callback(ctx, param, value):
        if value:
            try:
                ctx.default_map = {**(ctx.default_map or {}), **load_toml(value, cls, _warn)}
            except TransferError as exc:
                raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=callback, help="TOML file of option values (keys as option names); the command "
                                                "line wins.")


def _tensorflow() -> None:
    """What a command that trains or loads models runs first: TensorFlow imported quietly, and a
    Keras or TensorFlow outside the tested versions refused (transfer.internals fences the
    private surfaces it uses). `--help`, `compare` and the option checks import neither."""
    quiet.import_tensorflow()
    from transfer import internals

    try:
        internals.check_versions()
    except TransferError as exc:
        raise UserError(str(exc)) from None


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
        cfg = config.make(cls, **params)
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
        log = save_traceback(exc)
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="transfer")
@click.option("--verbose", is_flag=True,
              help=f"Show TensorFlow's own log lines and warnings (or {quiet.VERBOSE_ENV}=1).")
def main(verbose: bool):
    """Pretrain convolutional layers on unlabeled images, reuse them on labeled tasks, compare runs.

    Typical use: `transfer pretrain --data UNLABELED --out runs/enc`, then
    `transfer fine-tune --data LABELED --encoder runs/enc --labels-per-class 10`
    (and the baselines `--encoder random --freeze all|none`), then `transfer compare`.
    Every run appends one row to the results table (default experiments/results.csv).

    SRC is a directory of images (for labeled data: one subfolder per class), a CSV
    manifest with columns path[,label], or a built-in name: """
    if verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"


main.help += ", ".join(BUILTINS) + "."


def _param(f: dataclasses.Field, hint):
    """The click option (or argument) of one config field (transfer.config.option)."""
    how, name = f.metadata, f.name.replace("_", "-")
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    arm = next(a for a in typing.get_args(hint) if a is not type(None)) if union else hint
    item = typing.get_args(arm)[0] if typing.get_origin(arm) is tuple else None
    if "reader" in how:
        kind = {"budget": LabelBudget(), "head": HeadType()}[how["reader"]]
    elif "choices" in how:
        kind = click.Choice(list(how["choices"]))
    elif "path" in how and item is None:
        kind = click.Path(file_okay=how["path"] != "dir", dir_okay=how["path"] != "file")
    else:
        kind = ListOf(item) if item else arm
    if how.get("argument"):
        nargs = -1 if item else 1
        return click.argument(f.name, metavar=how.get("metavar"), nargs=nargs, required=nargs == 1,
                              type=click.Path(dir_okay=False) if item else kind if "path" in how else None)
    default = how.get("shown", f.default)  # shown: the default as the option reads it ("linear" for ())
    if item is not None and default and not isinstance(default, str):
        default = ",".join(map(str, default))
    shown = default not in (None, "", ())
    options = [f"--{name}/--no-{name}" if how.get("flag") else f"--{name}", f.name]
    flag = arm is bool and not how.get("flag")
    option = click.option(*options, type=None if arm is bool else kind, is_flag=flag or None,
                          metavar=how.get("metavar"), default=None if default == () else default,
                          show_default=shown, help=how["help"], required=how.get("required", False),
                          callback=(lambda c, p, v, empty=f.default: empty if v is None else v) if item else None)
    if "was" not in how:
        return option
    old = click.option(f"--{how['was'].replace('_', '-')}", f"was_{how['was']}", type=kind, hidden=True)
    return lambda fn: old(option(fn))  # the name before a rename, read for one release (config.renamed)


def options(cls, toml: bool = True):
    """Decorator: a command's arguments and options, made from `cls`'s fields (a section's in its
    place): the arguments and required options first, then the fields `cls` declares in their
    order, then inherited ones."""
    own = list(vars(cls).get("__annotations__", {}))
    place = {name: own.index(where or f.name) if (where or f.name) in own else len(own)
             for name, (f, _, where) in config.settable(cls).items()}
    fields = config.option_fields(cls)
    first = lambda f: f.metadata.get("argument") or f.metadata.get("required")  # noqa: E731
    fields.sort(key=lambda fh: (0 if first(fh[0]) else 1 if place[fh[0].name] < len(own) else 2, place[fh[0].name]))

    def decorate(fn):
        for f, hint in reversed(fields):
            fn = _param(f, hint)(fn)
        return config_option(cls)(fn) if toml else fn

    return decorate


# each command's config (its options, and its help: the docstring); its pipeline: pipelines.<name>
COMMANDS = {"pretrain": config.PretrainConfig, "fine-tune": config.FineTuneConfig, "evaluate": config.EvaluateConfig,
            "embed": config.EmbedConfig, "export": config.ExportConfig, "select": config.SelectConfig,
            "prepare": config.PrepareConfig, "compare": config.CompareConfig, "predict": config.PredictConfig,
            "visualize": config.VisualizeConfig, "experiment": config.ExperimentConfig, "demo": config.DemoConfig}
PANDAS_ONLY = {"compare"}  # commands that never need TensorFlow


def _command(name: str, cls) -> click.Command:
    def command(**params):
        given = {key[4:]: params.pop(key) for key in [k for k in params if k.startswith("was_")]}
        params.update(config.renamed(cls, {k: v for k, v in given.items() if v is not None}, _warn))
        if name not in PANDAS_ONLY:
            _tensorflow()
        _run(importlib.import_module(f"pipelines.{name.replace('-', '_')}"), cls, params)

    made = options(cls, toml=cls is not config.ExperimentConfig)(command)
    return click.command(name, cls=OneLineCommand, help=cls.__doc__)(made)


for _name, _config in COMMANDS.items():
    main.add_command(_command(_name, _config))


if __name__ == "__main__":
    main()
