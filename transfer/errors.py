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
