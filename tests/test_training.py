"""The fit machinery: one iterator over all epochs (arrays drawn as image sets are), backup cadence,
progress lines and bars."""

import keras
import numpy as np

from transfer import stream, training
from transfer.progress import Progress


def test_arrays_become_one_stream_of_full_batches_each_pass_a_permutation():
    x = np.arange(10, dtype="float32").reshape(10, 1)
    ds, steps = stream.ImageSet.of_arrays(x, np.arange(10)).train_batches(4, None, with_labels=True)
    assert steps == 3
    seen = []
    for images, labels in ds.take(10):  # 40 examples: four passes over the ten
        assert images.shape == (4, 1)  # never a smaller last batch: one traced step
        np.testing.assert_array_equal(images.numpy()[:, 0], labels.numpy())
        seen.extend(labels.numpy().tolist())
    passes = [sorted(seen[i : i + 10]) for i in range(0, 40, 10)]
    assert all(p == list(range(10)) for p in passes)
    assert seen[:10] != seen[10:20]  # reshuffled every pass


def test_fit_on_arrays_trains_ceil_n_over_batch_steps_an_epoch_on_one_iterator():
    x = np.random.default_rng(0).random((10, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    seen = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    history = training.fit(model, training.Arrays(x, np.arange(10) % 2, 4), 2, callbacks=[counter])
    assert len(history.history["loss"]) == 2 and seen == [0, 1, 2, 0, 1, 2]


def _tiny():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model, np.ones((8, 2), "float32"), np.ones((8, 1), "float32")


class _Seen(keras.callbacks.Callback):
    """Whether a backup exists when each epoch after the first begins (the previous one's end saved it or not)."""

    def __init__(self, path):
        super().__init__()
        self.path, self.exists = path, []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch:
            self.exists.append((self.path / "latest.weights.h5").exists())


def test_backups_wait_for_the_interval_on_one_worker(tmp_path, monkeypatch):
    for interval, expected in ((0.0, [True] * 3), (3600.0, [False] * 3)):
        monkeypatch.setattr(training, "BACKUP_SECONDS", interval)
        model, x, y = _tiny()
        seen = _Seen(tmp_path / f"b{interval}")
        training.fit(model, training.Arrays(x, y, 4), 4, training.Keep(backups=tmp_path / f"b{interval}"), [seen])
        assert seen.exists == expected


def test_progress_lines_every_fifth_with_eta_and_a_keras_bar_on_a_terminal(capsys):
    lines = []
    progress = Progress(lines.append, 10, "pretrain epoch")
    for done in range(1, 11):
        progress.update(done, {"loss": 1.0 / done, "name": "not a number"})
    assert [line.split()[2] for line in lines] == ["2/10", "4/10", "6/10", "8/10", "10/10"]
    assert "loss=0.5000" in lines[0] and ", ETA " in lines[0] and "ETA" not in lines[-1]
    resumed = []
    progress = Progress(resumed.append, 10, "epoch", start=6)
    for done in range(7, 11):
        progress.update(done)
    assert [line.split()[1] for line in resumed] == ["8/10", "10/10"]

    class Terminal(list):
        terminal = True

        def __call__(self, message):
            self.append(message)

    log = Terminal()
    progress = Progress(log, 3, "epoch", unit="epoch")
    for done in (1, 2, 3):
        progress.update(done, {"loss": 0.25})
    out = capsys.readouterr().out
    assert not log and "3/3" in out and "loss: 0.2500" in out  # Keras's Progbar, not our lines
