"""Stopping a run by signal, for every long command: SIGINT, SIGTERM and SIGHUP end it with one
line and exit 128 + signal, leave no temporary file and the results table unchanged but for
complete rows; after SIGKILL, the next run removes what was left; rerunning the same command
finishes with each epoch once and one row.

The four signals of one command run side by side (4 processes, then their 4 reruns), so the
matrix costs about what one command's cases would one after another.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_labeled_dir, stripes, write_image

from transfer import results

SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL")
TINY = ["--image-size", "8", "--filters", "4,8"]


def _pool(root: Path, n: int) -> Path:
    rng = np.random.default_rng(3)
    for i in range(n):
        write_image(root / f"u{i}.png", stripes("hvd"[i % 3], 12, rng))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    make_labeled_dir(root / "labeled", per_class=8, classes=("h", "v", "d"), size=12)
    _pool(root / "pool", 96)
    _pool(root / "many", 4000)  # prepare: enough files to be stopped mid-way
    return root


def _experiment(case: Path, data: Path) -> list[str]:
    (case / "exp.toml").write_text(f'''
name = "sig"
results = "{case / 'results.csv'}"
runs = "{case / 'runs'}"
seeds = [0]
labels_per_class = [3]
methods = ["autoencoder", "scratch"]
[pretrain]
data = "{data / 'pool'}"
image_size = 8
filters = [4, 8]
epochs = 8
batch_size = 16
plots = false
[fine_tune]
data = "{data / 'labeled'}"
image_size = 8
filters = [4, 8]
epochs = 3
''')
    return ["experiment", case / "exp.toml"]


# command -> (its arguments in a case folder, the file whose rows show it is training, rows it appends)
def _command(name: str, case: Path, data: Path):
    out, table = case / "out", case / "results.csv"
    if name == "pretrain":
        return (["pretrain", "--data", data / "pool", "--out", out, "--objective", "autoencoder", "--epochs", "15",
                 "--batch-size", "16", "--no-plots", "--results", table, *TINY], out.with_name("out.partial") /
                "history.csv", 1)
    if name == "fine-tune":
        return (["fine-tune", "--data", data / "labeled", "--encoder", "random", "--freeze", "none", "--epochs",
                 "60", "--labels-per-class", "4", "--out", out, "--results", table, *TINY],
                out.with_name("out.partial") / "history.csv", 1)
    if name == "fixmatch":
        return (["fine-tune", "--data", data / "labeled", "--encoder", "random", "--freeze", "none", "--unlabeled",
                 data / "pool", "--steps", "300", "--mu", "2", "--batch-size", "4", "--labels-per-class", "3",
                 "--out", out, "--results", table, *TINY], out.with_name("out.partial") / "history-semi.csv", 1)
    if name == "experiment":
        return _experiment(case, data), case / "runs" / "pretrain-autoencoder.partial" / "history.csv", 3
    return ["prepare", data / "many", "--out", out, "--image-size", "8"], out.with_name("out.partial"), 0


def _start(args, case: Path) -> subprocess.Popen:
    tmp = case / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.getcwd(), "TRANSFER_BACKUP_SECONDS": "0"}
    return subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *map(str, args)], cwd=case,
                            env=env, stdout=open(case / "stdout.log", "a"), stderr=open(case / "stderr.log", "w"))


def _started(marker: Path) -> bool:
    """Training is under way: two epochs logged (the first one's backup is complete), or the
    staging folder exists (prepare)."""
    if marker.suffix == ".csv":
        return marker.is_file() and marker.read_text().count("\n") >= 3
    return marker.is_dir()


def _leftovers(case: Path) -> list[str]:
    return sorted(p.name for p in (case / "tmp").iterdir() if p.name.startswith("transfer-"))


def _epochs_once(case: Path) -> None:
    for history in case.rglob("history*.csv"):
        epochs = pd.read_csv(history)["epoch"].tolist()
        assert epochs == list(range(len(epochs))), (history, epochs)


COMMANDS = ["pretrain", "fine-tune", "fixmatch", "experiment", "prepare"]


def _seed_table(case: Path) -> bytes:
    results.append_row(case / "results.csv", {"run_id": "earlier", "command": "fine-tune", "status": "ok",
                                              "data": "other", "method": "scratch", "labels_per_class": 2,
                                              "seed": 0, "test_accuracy": 0.5})
    return (case / "results.csv").read_bytes()


def _finished(case: Path, command: str, rows: int) -> None:
    """After the rerun: nothing left behind, the earlier row kept, one new row per run, each epoch once."""
    assert _leftovers(case) == [], _leftovers(case)  # SIGKILL's leftovers removed by the rerun
    table = pd.read_csv(case / "results.csv")  # (its header may have grown by the new rows' columns)
    assert table.loc[0, "run_id"] == "earlier" and len(table) == 1 + rows and table["run_id"].is_unique
    assert table["status"].fillna("ok").eq("ok").all()
    _epochs_once(case)
    assert (case / "out").is_dir() or command == "experiment"
    assert not list(case.rglob("*.partial"))
    assert [p.name for p in case.rglob("*.lock")] == ["results.csv.lock"]  # run-directory locks are gone


RESUMABLE = {"pretrain", "fine-tune", "fixmatch"}  # a backup after every epoch (TRANSFER_BACKUP_SECONDS=0)


def _history_rows(marker: Path) -> int:
    return marker.read_text().count("\n") - 1 if marker.suffix == ".csv" and marker.is_file() else 0


@pytest.mark.slow
def test_sigterm_and_sigkill_stop_every_command_and_the_rerun_resumes(data, tmp_path, monkeypatch):
    """As a scheduler or `kill` would: separate processes, all ten side by side; then each
    rerun (in this process) continues from the last backed-up epoch."""
    import tempfile

    from click.testing import CliRunner

    from cli import main

    cases = {}
    for command in COMMANDS:
        for name in ("SIGTERM", "SIGKILL"):
            case = tmp_path / f"{command}-{name}"
            case.mkdir()
            before = _seed_table(case)
            args, marker, rows = _command(command, case, data)
            cases[command, name] = (case, args, marker, rows, before, _start(args, case))
    waiting, deadline = dict(cases), time.time() + 240
    while waiting and time.time() < deadline:  # each one signalled as soon as it is under way
        for (command, name), (case, args, marker, rows, before, proc) in list(waiting.items()):
            assert proc.poll() is None, f"{command} {name} ended before it could be stopped"
            if _started(marker):
                proc.send_signal(getattr(signal, name))
                del waiting[command, name]
        time.sleep(0.02)
    assert not waiting, list(waiting)
    logged = {}
    for (command, name), (case, args, marker, rows, before, proc) in cases.items():
        code = proc.wait(timeout=120)
        stderr = (case / "stderr.log").read_text().strip().splitlines()
        if name == "SIGKILL":
            assert code == -signal.SIGKILL
        else:
            assert code == 128 + signal.SIGTERM, (command, code, stderr)
            assert len(stderr) == 1 and stderr[0].startswith("Stopped by SIGTERM") and "resume" in stderr[0], stderr
            assert _leftovers(case) == [], (command, _leftovers(case))  # the process removed its temporary files
        assert (case / "results.csv").read_bytes() == before  # no row, no torn line
        logged[command, name] = _history_rows(marker)
    for (command, name), (case, args, marker, rows, before, _) in cases.items():
        monkeypatch.setattr(tempfile, "tempdir", str(case / "tmp"))  # where that process kept its files
        monkeypatch.chdir(case)
        again = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert again.exit_code == 0, (command, name, again.output)
        if command in RESUMABLE:
            assert "resuming the interrupted run" in again.output, again.output
            restored = int(again.output.split("continuing after epoch ")[1].split()[0])
            assert logged[command, name] - 1 <= restored <= logged[command, name], (command, name, restored)
            assert pd.read_csv(case / "results.csv").iloc[-1]["attempts"] == 2  # the stopped process and this one
        _finished(case, command, rows)


@pytest.mark.slow
@pytest.mark.parametrize("name, command", [("SIGINT", "experiment"), ("SIGHUP", "fixmatch")])
def test_ctrl_c_and_a_closed_terminal_stop_a_command_in_process(data, tmp_path, monkeypatch, command, name):
    """SIGINT and SIGHUP, delivered to the CLI running in this process (as the terminal would)
    once training is under way; after SIGINT, the same command again. cli.py installs one handler
    for the three signals around every command, so each signal is sent to one command here: what
    each command does when stopped (one line, exit 128 + signal, no temporary file, the table
    unchanged, the rerun resuming) is checked for every command by the SIGTERM cases of
    test_sigterm_and_sigkill_stop_every_command_and_the_rerun_resumes."""
    import gc
    import tempfile
    import threading

    from click.testing import CliRunner

    from cli import main

    case = tmp_path / "case"
    case.mkdir()
    (case / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(case / "tmp"))
    monkeypatch.chdir(case)
    before = _seed_table(case)
    args, marker, rows = _command(command, case, data)
    stop = threading.Event()

    def signal_when_started():
        while not stop.is_set() and not _started(marker):
            time.sleep(0.01)
        if not stop.is_set():
            os.kill(os.getpid(), getattr(signal, name))

    watcher = threading.Thread(target=signal_when_started, daemon=True)
    watcher.start()
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        stop.set()
        watcher.join()
    gc.collect()  # in a real process the exit removes them; here, the last reference going does
    assert result.exit_code == 128 + getattr(signal, name), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Stopped by {name}") and "resume" in lines[0], lines
    assert _leftovers(case) == [] and (case / "results.csv").read_bytes() == before
    if name == "SIGHUP":
        return  # the same handler as SIGINT's, whose rerun is checked
    again = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    gc.collect()
    _finished(case, command, rows)
