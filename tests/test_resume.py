"""A pretraining killed with SIGKILL and started again continues from its last finished epoch."""

import os
import subprocess

import pandas as pd
import pytest
from conftest import cli_command, kill_after_epochs, make_labeled_dir


def _command(data, out, results):
    return cli_command("pretrain", "--data", data, "--out", out, "--objective", "autoencoder", "--epochs", "60",
                       "--image-size", "8", "--filters", "4,8", "--batch-size", "4", "--results", results)


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_with_each_epoch_once(tmp_path):
    make_labeled_dir(tmp_path / "d", per_class=30)
    out, results = tmp_path / "enc", tmp_path / "r.csv"
    logged = kill_after_epochs(_command(tmp_path / "d", out, results), tmp_path / "enc.partial" / "history.csv", 3)
    assert not out.exists(), "a killed run must not look complete"
    assert 3 <= logged < 60
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    again = subprocess.run(_command(tmp_path / "d", out, results), capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming the interrupted run" in again.stdout
    restored = int(again.stdout.split("continuing after epoch ")[1].split()[0])
    assert logged - 1 <= restored <= logged
    epochs = pd.read_csv(out / "history.csv")["epoch"].tolist()
    assert epochs == list(range(60))
    assert (out / "manifest.json").is_file() and not (tmp_path / "enc.partial").exists()
    assert len(pd.read_csv(results)) == 1


@pytest.mark.parametrize("torn", ["weights", "metadata"])
def test_a_backup_torn_by_a_kill_falls_back_to_the_previous_one(tmp_path, torn):
    """A kill while a backup is written leaves the latest weights or metadata torn; the chief
    puts the previous pair back before anyone loads (several workers must never race on it)."""
    import json
    import shutil

    import keras
    import numpy as np

    from transfer import training

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    backup = tmp_path / "backup"
    training.fit(model, x, y, epochs=3, batch_size=2, backup_dir=backup)  # finishes: backup deleted
    cb = training.SafeBackupAndRestore(str(backup), double_checkpoint=True)
    cb.set_model(model)
    backup.mkdir()
    model.save_weights(tmp_path / "w.weights.h5")
    for path in (cb._prev_weights_path, cb._weights_path):
        shutil.copy(tmp_path / "w.weights.h5", path)
    (backup / "training_metadata.json.bkp").write_text(json.dumps({"epoch": 2, "batch": 0}))
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": 0}))
    if torn == "weights":
        with open(cb._weights_path, "r+b") as f:
            f.truncate(100)
    else:
        (backup / "training_metadata.json").write_text("")
    lines = []
    restarted = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    restarted.compile("sgd", "mse")
    history = training.fit(restarted, x, y, epochs=5, batch_size=2, backup_dir=backup, log=lines.append)
    assert any("continuing after epoch 2" in line for line in lines), lines
    assert len(history.history["loss"]) == 3  # epochs 3..5
