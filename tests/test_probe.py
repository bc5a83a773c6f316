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


def test_probe_data_that_cannot_serve_is_refused_before_training(tmp_path):
    make_labeled_dir(tmp_path / "d", per_class=12, classes=("h", "v"))
    make_labeled_dir(tmp_path / "tiny", per_class=2, classes=("h", "v"))  # 1 per class outside its test split
    for bad, message in ((tmp_path / "nope", "not found"), (tmp_path / "tiny", "at least 2 labeled images")):
        args = ["pretrain", "--data", tmp_path / "d", "--out", tmp_path / "enc", "--epochs", "2", "--image-size", "8",
                "--filters", "4,8", "--results", tmp_path / "r.csv", "--probe-data", bad]
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 2 and message in result.stderr, result.output + result.stderr
        assert "epoch" not in result.output  # refused before any training
