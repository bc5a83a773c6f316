"""Backups torn by a kill fall back to the previous one (the kill-and-resume runs themselves:
tests/test_signals.py, every command and signal)."""

import pytest


@pytest.mark.parametrize("torn", ["weights", "metadata"])
def test_a_backup_torn_by_a_kill_falls_back_to_the_previous_one(tmp_path, torn):
    """A kill while a backup is written leaves the latest weights or metadata torn; the chief
    puts the previous pair back before anyone loads (several workers must never race on it)."""
    import json
    import shutil

    import keras
    import numpy as np

    from transfer import internals, training

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    backup = tmp_path / "backup"
    training.fit(model, training.Arrays(x, y, 2), 3, training.Keep(backups=backup))  # finishes: backup deleted
    cb = training.SafeBackupAndRestore(str(backup), double_checkpoint=True)
    cb.set_model(model)
    backup.mkdir()
    model.save_weights(tmp_path / "w.weights.h5")
    weights, _, prev_weights, _ = internals.backup_files(cb)  # Keras's names for its backup files
    for path in (prev_weights, weights):
        shutil.copy(tmp_path / "w.weights.h5", path)
    (backup / "training_metadata.json.bkp").write_text(json.dumps({"epoch": 2, "batch": 0}))
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": 0}))
    if torn == "weights":
        with open(weights, "r+b") as f:
            f.truncate(100)
    else:
        (backup / "training_metadata.json").write_text("")
    lines = []
    restarted = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    restarted.compile("sgd", "mse")
    history = training.fit(restarted, training.Arrays(x, y, 2), 5, training.Keep(backups=backup, log=lines.append))
    assert any("continuing after epoch 2" in line for line in lines), lines
    assert len(history.history["loss"]) == 3  # epochs 3..5
