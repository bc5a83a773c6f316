"""transfer embed: features with paths, nearest neighbours and near-duplicates."""

import shutil

import numpy as np
import pandas as pd
from conftest import invoke, make_labeled_dir

from pipelines import embed




def test_neighbours_and_duplicates_match_a_brute_force_cosine_search():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 6)).astype(np.float32)
    f[7] = f[3] * 2.0  # the same direction: cosine distance 0
    z = f / np.linalg.norm(f, axis=1, keepdims=True)
    d = 1.0 - z @ z.T
    np.fill_diagonal(d, np.inf)
    nearest, distance = embed.neighbours(f, 3)
    np.testing.assert_allclose(distance, np.sort(d, axis=1)[:, :3], atol=1e-5)  # the 3 smallest, in order
    np.testing.assert_allclose(np.take_along_axis(d, nearest, axis=1), distance, atol=1e-5)  # and theirs (3, 7 tie)
    pairs = embed.duplicates(f, 1e-4)
    assert [(a, b) for a, b, _ in pairs] == [(3, 7)]


def test_embed_writes_features_rows_neighbours_and_duplicates(tmp_path):
    make_labeled_dir(tmp_path / "pool", per_class=5, classes=("h", "v"))
    first = sorted((tmp_path / "pool" / "h").iterdir())[0]
    shutil.copy(first, tmp_path / "pool" / "h" / "copy.png")  # an exact duplicate
    out = tmp_path / "emb.npy"
    result = invoke("embed", "--encoder", "pixels", "--data", tmp_path / "pool", "--image-size", "8", "--labeled",
                    "--neighbors", "2", "--duplicates", "0.001", "--out", out)
    assert result.exit_code == 0, result.output
    f = np.load(out)
    rows = pd.read_csv(tmp_path / "emb.csv", keep_default_na=False)
    assert f.shape == (11, 64) and len(rows) == 11 and list(rows.columns)[:4] == ["row", "path", "id", "label"]
    assert set(rows["label"]) == {"h", "v"}
    assert all(len(n.split(";")) == 2 for n in rows["neighbors"])
    pairs = pd.read_csv(tmp_path / "emb-duplicates.csv")
    assert len(pairs) == 1 and {pairs["path_a"][0], pairs["path_b"][0]} == {str(first), str(tmp_path / "pool" / "h" / "copy.png")}
    copy_row = rows[rows["path"].str.endswith("copy.png")].iloc[0]
    assert copy_row["neighbors"].split(";")[0] == str(first)  # its nearest neighbour is the original


def test_embed_refuses_an_output_that_is_not_npy(tmp_path):
    result = invoke("embed", "--encoder", "pixels", "--data", "digits", "--out", tmp_path / "x.parquet")
    assert result.exit_code == 2 and "FILE.npy" in result.output
