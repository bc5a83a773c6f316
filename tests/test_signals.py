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
    _pool(root / "many", 3000)  # prepare: enough files to be stopped mid-way
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
epochs = 40
batch_size = 16
plots = false
[fine_tune]
data = "{data / 'labeled'}"
image_size = 8
filters = [4, 8]
epochs = 5
''')
    return ["experiment", case / "exp.toml"]


# command -> (its arguments in a case folder, the file whose rows show it is training, rows it appends)
def _command(name: str, case: Path, data: Path):
    out, table = case / "out", case / "results.csv"
    if name == "pretrain":
        return (["pretrain", "--data", data / "pool", "--out", out, "--objective", "autoencoder", "--epochs", "40",
                 "--batch-size", "16", "--no-plots", "--results", table, *TINY], out.with_name("out.partial") /
                "history.csv", 1)
    if name == "fine-tune":
        return (["fine-tune", "--data", data / "labeled", "--encoder", "random", "--freeze", "none", "--epochs",
                 "120", "--labels-per-class", "4", "--out", out, "--results", table, *TINY],
                out.with_name("out.partial") / "history.csv", 1)
    if name == "fixmatch":
        return (["fine-tune", "--data", data / "labeled", "--encoder", "random", "--freeze", "none", "--unlabeled",
                 data / "pool", "--steps", "600", "--mu", "2", "--batch-size", "4", "--labels-per-class", "3",
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
    if marker.suffix == ".csv":
        return marker.is_file() and marker.read_text().count("\n") >= 2
    return marker.is_dir()


def _leftovers(case: Path) -> list[str]:
    return sorted(p.name for p in (case / "tmp").iterdir() if p.name.startswith("transfer-"))


def _epochs_once(case: Path) -> None:
    for history in case.rglob("history*.csv"):
        epochs = pd.read_csv(history)["epoch"].tolist()
        assert epochs == list(range(len(epochs))), (history, epochs)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pretrain", "fine-tune", "fixmatch", "experiment", "prepare"])
def test_every_signal_stops_cleanly_and_the_rerun_finishes(data, tmp_path, command):
    cases = {}
    for name in SIGNALS:
        case = tmp_path / name
        case.mkdir()
        results.append_row(case / "results.csv", {"run_id": "earlier", "command": "fine-tune", "status": "ok",
                                                  "data": "other", "method": "scratch", "labels_per_class": 2,
                                                  "seed": 0, "test_accuracy": 0.5})
        args, marker, rows = _command(command, case, data)
        cases[name] = (case, args, marker, rows, (case / "results.csv").read_bytes(), _start(args, case))
    for name, (case, args, marker, rows, before, proc) in cases.items():
        deadline = time.time() + 120
        while not _started(marker) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"{command} {name} ended before it could be stopped"
        proc.send_signal(getattr(signal, name))
    for name, (case, args, marker, rows, before, proc) in cases.items():
        signum = getattr(signal, name)
        code = proc.wait(timeout=120)
        stderr = (case / "stderr.log").read_text().strip().splitlines()
        if name == "SIGKILL":
            assert code == -signal.SIGKILL
        else:
            assert code == 128 + signum, (name, code, stderr)
            assert len(stderr) == 1 and stderr[0].startswith(f"Stopped by {name}") and "resume" in stderr[0], stderr
            assert _leftovers(case) == [], (name, _leftovers(case))
        assert (case / "results.csv").read_bytes() == before  # no row, no torn line
    for name, (case, args, marker, rows, before, _) in cases.items():
        cases[name] = (case, args, marker, rows, before, _start(args, case))
    for name, (case, args, marker, rows, before, proc) in cases.items():
        assert proc.wait(timeout=300) == 0, (name, (case / "stderr.log").read_text())
        assert _leftovers(case) == [], (name, _leftovers(case))  # SIGKILL's leftovers removed by the rerun
        table = pd.read_csv(case / "results.csv")  # (its header may have grown by the new rows' columns)
        assert table.loc[0, "run_id"] == "earlier" and len(table) == 1 + rows and table["run_id"].is_unique
        assert table["status"].fillna("ok").eq("ok").all()
        _epochs_once(case)
        assert (case / "out").is_dir() or command == "experiment"
        assert not list(case.rglob("*.partial"))
