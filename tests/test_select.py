"""transfer select: which images to label, before any label exists."""

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir

from transfer import selection
from transfer.errors import TransferError


def blobs(n_blobs=5, per_blob=40, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_blobs, 8)) * 6
    x = np.concatenate([c + rng.normal(size=(per_blob, 8)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(n_blobs), per_blob)


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_neighbours():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    t = selection.typicality(x, 2)
    expected = 1.0 / (np.array([(1 + 3) / 2, (1 + 2) / 2, (2 + 3) / 2, (4 + 6) / 2]) + 1e-5)
    np.testing.assert_allclose(t, expected, rtol=1e-6)


@pytest.mark.parametrize("strategy", ["typiclust", "kcenter"])
def test_typiclust_and_kcenter_cover_every_mode_where_random_does_not(strategy):
    x, y = blobs()
    chosen = selection.select(strategy, x, 5, seed=0)
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert sorted(set(y[chosen])) == [0, 1, 2, 3, 4]
    missed = [len(set(y[selection.select("random", x, 5, seed=s)])) < 5 for s in range(20)]
    assert sum(missed) >= 10  # a blind draw of 5 from 5 modes usually misses one (1 - 5!/5^5 = 96%)


def test_typiclust_takes_the_densest_image_of_a_cluster():
    rng = np.random.default_rng(1)
    core = rng.normal(size=(30, 2)) * 0.1  # a dense core, then a sparse halo
    halo = rng.normal(size=(30, 2)) * 2.0
    x = np.concatenate([core, halo]).astype(np.float32) + 10.0  # away from the origin: normalization keeps shape
    chosen = selection.typiclust(x, 1, np.zeros(0, np.int64), seed=0)
    assert chosen[0] < 30


def test_nothing_already_labeled_is_chosen_and_the_next_round_goes_elsewhere():
    x, y = blobs()
    first = selection.select("typiclust", x, 5, seed=0)
    second = selection.select("typiclust", x, 5, labeled=first, seed=0)
    assert not set(first) & set(second) and len(second) == 5
    k2 = selection.select("kcenter", x, 5, labeled=first, seed=0)
    assert not set(first) & set(k2)
    everything = selection.select("kcenter", x, 500, seed=0)
    assert len(everything) == len(x) and len(set(everything)) == len(x)  # fewer left than asked: all of them


def test_bad_strategy_budget_or_an_exhausted_pool_are_refused():
    x, _ = blobs(n_blobs=1, per_blob=6)
    with pytest.raises(TransferError, match="strategy must be one of"):
        selection.select("entropy", x, 2)
    with pytest.raises(TransferError, match="budget must be >= 1"):
        selection.select("random", x, 0)
    with pytest.raises(TransferError, match="already labeled"):
        selection.select("kcenter", x, 2, labeled=np.arange(6))




def test_select_writes_the_list_the_sheet_and_the_row_and_a_second_round_excludes_the_first(tmp_path):
    out, results = tmp_path / "to_label.csv", tmp_path / "results.csv"
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--budget", "10",
                    "--out", out, "--results", results)
    assert result.exit_code == 0, result.output
    chosen = pd.read_csv(out, dtype=str)
    assert list(chosen.columns) == ["path", "label"] and len(chosen) == 10
    assert chosen["path"].str.match(r"digits\[\d+\]$").all() and chosen["label"].notna().all()
    assert (tmp_path / "to_label.png").is_file()
    assert "data:image/png;base64," in (tmp_path / "to_label.html").read_text()
    row = pd.read_csv(results).iloc[-1]
    assert row["command"] == "select" and row["n_selected"] == 10 and row["strategy"] == "typiclust"
    assert row["labeled_classes"] == chosen["label"].nunique() and row["classes"] == 10
    assert row["n_pool"] == 1797 - 359  # the pool leaves the test split out, as fine-tune does
    again = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--budget", "10",
                   "--exclude", out, "--out", tmp_path / "round2.csv", "--results", results)
    assert again.exit_code == 0, again.output
    second = pd.read_csv(tmp_path / "round2.csv", dtype=str)
    assert not set(second["path"]) & set(chosen["path"]) and len(second) == 10
    assert pd.read_csv(results).iloc[-1]["n_excluded"] == 10


def test_select_on_an_unlabeled_folder_with_a_random_encoder_leaves_labels_to_fill(tmp_path):
    make_labeled_dir(tmp_path / "pool", per_class=8, classes=("h", "v", "d"))
    out = tmp_path / "pick.csv"
    result = invoke("select", "--data", tmp_path / "pool", "--encoder", "random", "--filters", "4,8",
                    "--image-size", "8", "--budget", "4", "--strategy", "kcenter", "--out", out,
                    "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    chosen = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(chosen) == 4 and (chosen["label"] == "").all()
    assert all((tmp_path / "pool").as_posix() in p or not p.startswith("/") for p in chosen["path"])


def test_select_bad_input_is_one_error_line(tmp_path):
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--budget", "5",
                    "--exclude", tmp_path / "bad.csv", "--out", tmp_path / "o.csv", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2 and "needs a path column" in result.output
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--budget", "0", "--out", tmp_path / "o.csv")
    assert result.exit_code == 2 and "budget must be >= 1" in result.output
    result = invoke("select", "--data", "digits", "--encoder", tmp_path / "nope", "--budget", "3",
                    "--out", tmp_path / "o.csv", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2 and "Error:" in result.output
