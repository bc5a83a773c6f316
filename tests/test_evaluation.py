"""The feature evaluation (transfer.evaluation, `transfer evaluate`) against its formulas."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_labeled_dir

from cli import main
from transfer import evaluation


def test_one_nearest_neighbour_is_by_cosine_similarity():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    # [10, 1] is far from [1, 0] in Euclidean distance but at a small angle: cosine picks class 0
    test = np.array([[10.0, 1.0], [0.1, 3.0]])
    assert evaluation.nearest_accuracy(train, np.array([0, 1]), test, np.array([0, 1])) == 1.0
    assert evaluation.nearest_accuracy(train, np.array([0, 1]), test, np.array([1, 1])) == 0.5


def test_knn_blocks_give_the_same_votes_as_one_block():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(200, 8)), rng.normal(size=(70, 8))
    labels = rng.integers(0, 4, 200)
    whole = evaluation.knn_predict(train, labels, test, 4, batch=1000)
    assert np.array_equal(whole, evaluation.knn_predict(train, labels, test, 4, batch=7))


def test_draws_take_the_budget_of_every_class_and_differ():
    labels = np.repeat(np.arange(3), 10)
    rng = np.random.default_rng(0)
    a, b = evaluation.draw_per_class(labels, 4, rng), evaluation.draw_per_class(labels, 4, rng)
    assert np.bincount(labels[a]).tolist() == [4, 4, 4] and not np.array_equal(a, b)


def test_scores_separate_informative_features_from_noise():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 16)) * 3
    y, yt = rng.integers(0, 3, 150), rng.integers(0, 3, 60)
    good = evaluation.scores(centers[y] + rng.normal(size=(150, 16)), y, centers[yt] + rng.normal(size=(60, 16)), yt,
                             3, budgets=(1, 4), draws=3)
    noise = evaluation.scores(rng.normal(size=(150, 16)), y, rng.normal(size=(60, 16)), yt, 3, budgets=(1,), draws=3)
    assert good["knn"] > 0.95 and good["probe"] > 0.95 and good["nn1_4"] > 0.9 and good["nn1_1_std"] >= 0
    assert noise["knn"] < 0.6 and noise["nn1_1"] < 0.6
    assert evaluation.error_ratio(0.97, 0.95) == pytest.approx(0.6)


@pytest.mark.slow
def test_evaluate_writes_a_row_per_features_and_readout(tmp_path):
    labeled = make_labeled_dir(tmp_path / "labeled", per_class=14, classes=("h", "v", "d"), size=12)
    runner = CliRunner()
    result = runner.invoke(main, ["pretrain", "--data", str(labeled), "--out", str(tmp_path / "enc"), "--epochs", "1",
                                  "--objective", "autoencoder", "--image-size", "8", "--filters", "4,8",
                                  "--batch-size", "8", "--results", str(tmp_path / "r.csv"), "--no-plots"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["evaluate", "--encoder", str(tmp_path / "enc"), "--data", str(labeled),
                                  "--readouts", "avg,stats", "--draws", "2", "--results", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "r.csv")
    rows = df[df["command"] == "evaluate"]
    assert [(m, r if r == r else "") for m, r in zip(rows["method"], rows["readout"])] == [
        ("pixels", ""), ("random", "avg"), ("random", "stats"), ("kmeans-filters", "avg"), ("kmeans-filters", "stats"),
        ("autoencoder", "avg"), ("autoencoder", "stats")]
    pixels = rows.iloc[0]
    assert pixels["feature_dim"] == 64 and pixels["knn_error_vs_pixels"] == 1.0
    assert (rows["n_test"] == 9).all() and (rows["n_train"] == 33).all()  # 3 of each 14 held out by content
    for r in rows.itertuples():
        assert 0 <= r.knn_accuracy <= 1 and 0 <= r.nn1_4 <= 1 and r.nn1_1_std >= 0
        assert r.knn_error_vs_pixels == pytest.approx((1 - r.knn_accuracy) / max(1 - pixels["knn_accuracy"], 1e-9),
                                                      abs=1e-3)
    assert "k-NN err vs pixels" in result.output and "1-NN@4" in result.output
    # the encoder's rows against the random encoder's and the k-means filters' of the same readout: the
    # ratio, and a verdict line each
    for baseline, method, whose, what in [
            ("random", "random", "a random encoder's", "a random encoder of the same architecture"),
            ("kmeans", "kmeans-filters", "k-means filters'", "the same architecture with k-means filters")]:
        assert rows[f"knn_error_vs_{baseline}"].isna().tolist() == [True] * 5 + [False] * 2
        for readout in ("avg", "stats"):
            mine, other = (rows.set_index(["method", "readout"]).loc[(m, readout)] for m in ("autoencoder", method))
            assert mine[f"knn_error_vs_{baseline}"] == pytest.approx(
                (1 - mine["knn_accuracy"]) / max(1 - other["knn_accuracy"], 1e-9), abs=1e-3)
            line = next(l for l in result.output.splitlines()
                        if f"autoencoder features ({readout} readout)" in l and whose in l)
            assert (f"20-NN {100 * mine['knn_accuracy']:.1f}% against {100 * other['knn_accuracy']:.1f}% for {what}"
                    ) in line and "on 9 test images" in line
            assert line.startswith(("autoencoder features", "warning: autoencoder features"))
    bad = runner.invoke(main, ["evaluate", "--encoder", str(tmp_path / "nope"), "--data", str(labeled)])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_the_verdict_against_a_random_encoder_needs_a_paired_interval_above_zero():
    from pipelines.evaluate import verdicts

    right, wrong = np.ones(20, bool), np.zeros(20, bool)
    half = np.r_[np.ones(10), np.zeros(10)].astype(bool)
    lines = verdicts({("pixels", "pixels"): half, ("random", "avg"): wrong, ("kmeans", "avg"): right,
                      ("encoder", "avg"): right, ("encoder", "projector"): right, ("random", "stats"): half,
                      ("encoder", "stats"): half}, "contrastive")
    assert lines == [  # the projector has no random or k-means counterpart, nor stats a k-means one: no line
        "contrastive features (avg readout) are better than a random encoder's: 20-NN 100.0% against 0.0% for a "
        "random encoder of the same architecture on 20 test images; +100.0 points [95% CI +100.0, +100.0]",
        "warning: contrastive features (avg readout) are no better than k-means filters': 20-NN 100.0% against "
        "100.0% for the same architecture with k-means filters (seconds, no labels) on 20 test images; +0.0 points "
        "[95% CI +0.0, +0.0]",
        "warning: contrastive features (stats readout) are no better than a random encoder's: 20-NN 50.0% against "
        "50.0% for a random encoder of the same architecture on 20 test images; +0.0 points [95% CI +0.0, +0.0]"]


def test_rankme_is_the_exponential_of_the_entropy_of_the_normalized_singular_values():
    """Garrido et al.'s formula: p_k = sigma_k / sum(sigma) + 1e-7, RankMe = exp(-sum p log p)."""
    p = np.array([3.0, 1.0]) / 4 + 1e-7
    assert evaluation.rankme(np.diag([3.0, 1.0])) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert evaluation.rankme(np.eye(5)) == pytest.approx(5.0, rel=1e-5)
    line = np.outer(np.arange(1.0, 50.0), np.arange(1.0, 9.0))  # every image on one line
    assert evaluation.rankme(line) == pytest.approx(1.0, abs=1e-3)
    spread = np.random.default_rng(0).normal(size=(5000, 16))  # every direction used alike
    assert 15.5 < evaluation.rankme(spread) <= 16.0
    assert evaluation.rankme(spread, samples=100) != evaluation.rankme(spread)  # reads at most `samples` rows
