"""The one exception type users are meant to see."""


class TransferError(Exception):
    """A problem with the user's input, described in one line.

    The CLI prints the message (no traceback) and exits with code 2. Messages
    say what was wrong and what was received.
    """


class TrainingDiverged(TransferError):
    """The loss became NaN or infinite; the run is recorded as failed."""


class RunComplete(TransferError):
    """The run directory already holds a finished run: nothing to do (exit code 0)."""


def save_traceback(exc: BaseException) -> str:
    """Write the traceback to error-<time>.log in the run's staging directory, else a temp file."""
    import os
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
