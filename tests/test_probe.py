"""The online probe while pretraining (--probe-data): its k-NN against the formula, its column."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_labeled_dir

from cli import main
from transfer import evaluation, probe


def test_knn_accuracy_is_the_weighted_vote_of_the_k_most_similar():
    rng = np.random.default_rng(0)
    train_f, val_f = rng.normal(size=(30, 5)), rng.normal(size=(12, 5))
    train_y, val_y = rng.integers(0, 3, 30), rng.integers(0, 3, 12)
    expected = []
    for v in val_f:
        sim = (train_f @ v) / (np.linalg.norm(train_f, axis=1) * np.linalg.norm(v))
        top = np.argsort(-sim)[:4]
        votes = [sum(np.exp(sim[i] / 0.1) for i in top if train_y[i] == c) for c in range(3)]
        expected.append(int(np.argmax(votes)))
    got = evaluation.knn_accuracy(train_f, train_y, val_f, val_y, 3, k=4, temperature=0.1)
    assert got == np.mean(np.array(expected) == val_y)
    # features that separate the classes are scored perfectly
    centers = np.eye(3) * 10
    assert evaluation.knn_accuracy(centers[train_y] + rng.normal(size=(30, 3)), train_y,
                              centers[val_y] + rng.normal(size=(12, 3)), val_y, 3) == 1.0


def test_halves_are_stratified_and_disjoint():
    labels = np.repeat([0, 1, 2], [4, 5, 6])
    a, b = probe.split_halves(labels, seed=0)
    assert not set(a) & set(b) and len(a) + len(b) == 15
    assert [int((labels[a] == c).sum()) for c in range(3)] == [2, 3, 3]


@pytest.mark.slow
def test_pretrain_with_probe_data_logs_probe_knn_per_epoch_and_in_the_row(tmp_path):
    make_labeled_dir(tmp_path / "d", per_class=12, classes=("h", "v", "d"))
    args = ["pretrain", "--data", tmp_path / "d", "--out", tmp_path / "enc", "--epochs", "3", "--objective",
            "autoencoder", "--image-size", "8", "--filters", "4,8", "--batch-size", "8", "--no-plots",
            "--results", tmp_path / "r.csv", "--probe-data", tmp_path / "d"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "online probe: k-NN accuracy on 30 labeled images" in result.output  # 10 per class outside the test split
    history = pd.read_csv(tmp_path / "enc" / "history.csv")
    assert history["probe_knn"].between(0, 1).all() and len(history) == 3
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["probe_knn"] == history["probe_knn"].iloc[-1]
    # the encoder before pretraining and the raw pixels, on the same 15 scored images, and the verdict line
    assert 0 <= row["probe_knn_start"] <= 1 and 0 <= row["probe_knn_pixels"] <= 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(("probe: pretraining learned",
                            "warning: the pretrained features tell the probe's classes apart no better"))
    assert (f"k-NN {100 * row['probe_knn']:.1f}% on the probe's 15 scored images, {100 * row['probe_knn_start']:.1f}% "
            f"before pretraining (random weights), {100 * row['probe_knn_pixels']:.1f}% on raw pixels") in last


def _watch(encoder, images, labels):
    return probe.OnlineProbe(encoder, images, labels, 2, epochs=4, seed=0)


def test_the_probe_scores_the_encoder_before_pretraining_and_the_pixels_on_the_same_images():
    """`start`: the encoder's k-NN as it was built (later training does not change it);
    `pixels`: the flattened images'; both the k-NN of `transfer evaluate` on the probe's halves."""
    import keras

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    images = 0.1 * rng.random((40, 6, 6, 1)).astype("float32")
    images[labels == 1, :, :3] += 1.0  # class 1: brighter top half
    encoder = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, padding="same")])
    watch = _watch(encoder, images, labels)
    a, b = watch.reference, watch.scored
    pooled = np.asarray(encoder(images)).mean(axis=(1, 2))
    assert watch.start == evaluation.knn_accuracy(pooled[a], labels[a], pooled[b], labels[b], 2)
    flat = images.reshape(40, -1)
    assert watch.pixels == evaluation.knn_accuracy(flat[a], labels[a], flat[b], labels[b], 2) == 1.0
    before = watch.start
    encoder.layers[0].kernel.assign(np.zeros((3, 3, 1, 4), "float32"))  # training changes the weights ...
    logs = {}
    watch.on_epoch_end(3, logs)
    assert watch.start == before and logs["probe_knn"] == watch.last  # ... not the start


def test_the_verdict_needs_a_paired_interval_above_zero():
    """+1 on 12 of 20 images and 0 on the rest: 60 points, interval above zero; the same
    images right before and after: no better, said in a warning line; worse: also no better."""
    mean, low, high = evaluation.paired_difference(np.r_[np.ones(12), np.zeros(8)], np.zeros(20))
    d = np.r_[np.ones(12), np.zeros(8)]
    half = 100 * 1.96 * d.std(ddof=1) / np.sqrt(20)
    assert mean == pytest.approx(60) and (low, high) == pytest.approx((60 - half, 60 + half)) and low > 0

    class Watch:
        pixels_correct = np.r_[np.ones(10), np.zeros(10)].astype(bool)
        start_correct = np.zeros(20, bool)
        pixels, start = 0.5, 0.0

    better = Watch()
    better.last_correct = np.r_[np.ones(12), np.zeros(8)].astype(bool)
    assert probe.verdict(better, "random weights") == (
        "probe: pretraining learned features its start lacked: k-NN 60.0% on the probe's 20 scored images, 0.0% before "
        f"pretraining (random weights), 50.0% on raw pixels; +60.0 points [95% CI {low:+.1f}, {high:+.1f}]")
    same = Watch()
    same.last_correct = same.start_correct.copy()
    line = probe.verdict(same, "random weights")
    assert line.startswith("warning: the pretrained features tell the probe's classes apart no better than the "
                           "encoder before pretraining: k-NN 0.0%") and line.endswith("+0.0 points [95% CI +0.0, +0.0]")
    worse = Watch()
    worse.start_correct, worse.start = np.ones(20, bool), 1.0
    worse.last_correct = np.r_[np.ones(15), np.zeros(5)].astype(bool)
    assert probe.verdict(worse, "random weights").startswith("warning:")


def test_probe_data_that_cannot_serve_is_refused_before_training(tmp_path):
    make_labeled_dir(tmp_path / "d", per_class=12, classes=("h", "v"))
    make_labeled_dir(tmp_path / "tiny", per_class=2, classes=("h", "v"))  # 1 per class outside its test split
    for bad, message in ((tmp_path / "nope", "not found"), (tmp_path / "tiny", "at least 2 labeled images")):
        args = ["pretrain", "--data", tmp_path / "d", "--out", tmp_path / "enc", "--epochs", "2", "--image-size", "8",
                "--filters", "4,8", "--results", tmp_path / "r.csv", "--probe-data", bad]
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 2 and message in result.stderr, result.output + result.stderr
        assert "epoch" not in result.output  # refused before any training
