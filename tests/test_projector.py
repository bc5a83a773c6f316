"""The `projector` readout: a two-view objective's projection head, saved beside the encoder,
read out and fine-tuned through (SimCLRv2's fine-tuning from the projection head)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir

from transfer import artifacts, models

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "8"]


def assert_user_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and pattern in result.output, result.output


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A labeled folder, a contrastive encoder (projector widths 6,5) and an autoencoder, pretrained on it."""
    root = tmp_path_factory.mktemp("proj")
    make_labeled_dir(root / "labeled", per_class=10, classes=("h", "v", "d"))
    for objective, extra in (("contrastive", ["--projector", "6,5"]), ("autoencoder", [])):
        result = invoke("pretrain", "--data", root / "labeled", "--out", root / objective, "--epochs", "2",
                        "--objective", objective, "--no-plots", "--results", root / "pre.csv", *extra, *TINY)
        assert result.exit_code == 0, result.output
    return root


def fine_tune(ws, out, *args):
    return invoke("fine-tune", "--data", ws / "labeled", "--encoder", ws / "contrastive", "--labels-per-class", "3",
                  "--epochs", "2", "--seed", "1", "--out", out, "--results", ws / "ft.csv", *TINY, *args)


def row_of(ws, out):
    df = pd.read_csv(ws / "ft.csv")
    return df[df["run_dir"] == str(out)].iloc[0]


def head_weights(model):
    return [np.array(w) for w in model.get_layer("features").get_layer("projector").weights]


def test_a_two_view_encoder_keeps_its_projection_head_and_the_readout_runs_through_it(ws):
    manifest = json.loads((ws / "contrastive" / "manifest.json").read_text())
    entry = manifest["projector"]
    assert entry["file"] == "projector.keras"
    assert artifacts.sha256_file(ws / "contrastive" / "projector.keras") == entry["sha256"]
    assert json.loads((ws / "autoencoder" / "manifest.json").read_text())["projector"] is None
    encoder, manifest = artifacts.load_model_run(ws / "contrastive", "encoder")
    projector = artifacts.load_projector(ws / "contrastive", manifest)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    got = np.array(models.build_features(encoder, "projector", True, projector)(x))
    pooled = np.array(encoder(x, training=False)).mean(axis=(1, 2))
    assert got.shape == (4, 5)  # the --projector widths' last
    np.testing.assert_allclose(got, np.array(projector(pooled, training=False)), rtol=1e-5, atol=1e-6)


def test_a_changed_projection_head_is_refused(ws, tmp_path):
    import shutil

    copy = tmp_path / "enc"
    shutil.copytree(ws / "contrastive", copy)
    with open(copy / "projector.keras", "ab") as f:
        f.write(b"\0")
    result = invoke("fine-tune", "--data", ws / "labeled", "--encoder", copy, "--readout", "projector",
                    "--labels-per-class", "3", "--out", tmp_path / "ft", "--results", tmp_path / "r.csv", *TINY)
    assert_user_error(result, "SHA-256 does not match")


def test_frozen_the_head_stays_as_pretrained_and_fine_tuned_it_trains(ws, tmp_path):
    encoder, manifest = artifacts.load_model_run(ws / "contrastive", "encoder")
    pretrained = [np.array(w) for w in artifacts.load_projector(ws / "contrastive", manifest).weights]
    frozen, tuned = tmp_path / "frozen", tmp_path / "tuned"
    assert fine_tune(ws, frozen, "--readout", "projector", "--freeze", "all", "--unfreeze-top", "1").exit_code == 0
    assert fine_tune(ws, tuned, "--readout", "projector", "--freeze", "none").exit_code == 0
    for out, same in ((frozen, True), (tuned, False)):
        row = row_of(ws, out)
        assert row["readout"] == "projector" and row["readout_choice"] == "given"
        saved = head_weights(artifacts.load_model_run(out, "classifier")[0])
        assert len(saved) == len(pretrained)
        assert all(np.array_equal(a, b) for a, b in zip(saved, pretrained)) == same, out.name


def test_auto_reads_out_through_the_head_when_the_encoder_has_one_else_cross_validates(ws, tmp_path):
    result = fine_tune(ws, tmp_path / "auto", "--freeze", "all", "--unfreeze-top", "0")
    assert result.exit_code == 0, result.output
    row = row_of(ws, tmp_path / "auto")
    assert row["readout"] == "projector" and row["readout_choice"] == "head"
    classifier = artifacts.load_model_run(tmp_path / "auto", "classifier")[0]
    assert classifier.get_layer("features").output.shape[-1] == 5  # the head's output, the --projector widths' last
    result = invoke("fine-tune", "--data", ws / "labeled", "--encoder", ws / "autoencoder", "--labels-per-class", "3",
                    "--out", tmp_path / "ae", "--results", tmp_path / "r.csv", "--freeze", "all", *TINY)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["readout"] in ("avg", "multi", "stats") and row["readout_choice"].startswith("cv avg=")


def test_the_projector_readout_without_a_head_is_refused_before_training(ws, tmp_path):
    for encoder in ("random", ws / "autoencoder"):
        result = invoke("fine-tune", "--data", ws / "labeled", "--encoder", encoder, "--readout", "projector",
                        "--labels-per-class", "3", "--out", tmp_path / "ft", "--results", tmp_path / "r.csv", *TINY)
        assert_user_error(result, "projection head" if encoder != "random" else "has none")
        assert "epoch" not in result.output
    result = invoke("evaluate", "--encoder", ws / "autoencoder", "--data", ws / "labeled", "--readouts", "projector",
                    "--results", tmp_path / "r.csv")
    assert_user_error(result, "no projection head")
    assert not (tmp_path / "r.csv").exists()
    # the default readouts score the projector only when there is one
    result = invoke("evaluate", "--encoder", ws / "autoencoder", "--data", ws / "labeled", "--draws", "1",
                    "--no-baselines", "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(tmp_path / "r.csv")["readout"].fillna("")) == ["", "avg", "multi", "stats"]


def test_evaluate_select_and_embed_read_through_the_head(ws, tmp_path):
    result = invoke("evaluate", "--encoder", ws / "contrastive", "--data", ws / "labeled", "--draws", "1",
                    "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "r.csv")
    assert [(m, r if r == r else "") for m, r in zip(rows["method"], rows["readout"])] == [
        ("pixels", ""), *[(m, r) for m in ("random", "kmeans-filters", "contrastive") for r in ("avg", "multi", "stats")],
        ("contrastive", "projector")]
    assert rows.iloc[-1]["feature_dim"] == 5
    result = invoke("select", "--data", ws / "labeled", "--encoder", ws / "contrastive", "--readout", "projector",
                    "--labels", "4", "--out", tmp_path / "pick.csv", "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "pick.csv")) == 4
    assert pd.read_csv(tmp_path / "r.csv").iloc[-1]["readout"] == "projector"
    result = invoke("embed", "--encoder", ws / "contrastive", "--data", ws / "labeled", "--readout", "projector",
                    "--out", tmp_path / "emb.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "emb.npy").shape == (30, 5)  # every image, through the head
    for encoder, out in (("contrastive", "auto.npy"), ("autoencoder", "ae.npy")):  # the default: select's readout
        result = invoke("embed", "--encoder", ws / encoder, "--data", ws / "labeled", "--out", tmp_path / out)
        assert result.exit_code == 0, result.output
    assert "readout projector" in invoke("embed", "--encoder", ws / "contrastive", "--data", ws / "labeled",
                                         "--out", tmp_path / "again.npy").output
    np.testing.assert_allclose(np.load(tmp_path / "auto.npy"), np.load(tmp_path / "emb.npy"), atol=1e-6)
    assert np.load(tmp_path / "ae.npy").shape[1] != 5  # no head: the pooled maps


def test_select_and_a_fine_tunes_selection_choose_through_the_head_by_default(ws, tmp_path):
    picks, results = {}, tmp_path / "r.csv"
    for encoder, readout in (("contrastive", None), ("contrastive", "projector"), ("autoencoder", None)):
        out = tmp_path / f"{encoder}-{readout}.csv"
        result = invoke("select", "--data", ws / "labeled", "--encoder", ws / encoder, "--labels", "4", "--out", out,
                        "--no-sheet", "--results", results, *(["--readout", readout] if readout else []))
        assert result.exit_code == 0, result.output
        picks[encoder, readout] = list(pd.read_csv(out)["path"])
    # auto: through the head when the encoder has one (what its fine-tunes read), else the pooled maps
    assert list(pd.read_csv(results)["readout"]) == ["projector", "projector", "avg"]
    assert picks["contrastive", None] == picks["contrastive", "projector"]
    result = invoke("select", "--data", ws / "labeled", "--encoder", "random", "--readout", "projector", "--labels",
                    "4", "--out", tmp_path / "o.csv", "--results", results, "--image-size", "8")
    assert_user_error(result, "has none")
    result = invoke("fine-tune", "--data", ws / "labeled", "--encoder", ws / "contrastive", "--labels", "4",
                    "--selection", "typiclust", "--epochs", "2", "--out", tmp_path / "ft", "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    assert f"chosen by typiclust on {ws / 'contrastive'} (projector)" in result.output
    row = pd.read_csv(results).iloc[-1]
    assert row["select_readout"] == "projector" and row["labels"] == 4
    # --select-readout avg keeps the choice through the pooled maps; projector needs a pretrained encoder
    result = invoke("fine-tune", "--data", ws / "labeled", "--encoder", ws / "contrastive", "--labels", "4",
                    "--selection", "typiclust", "--select-readout", "avg", "--epochs", "2", "--out", tmp_path / "ft2",
                    "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    assert f"chosen by typiclust on {ws / 'contrastive'} (avg)" in result.output
    rows = pd.read_csv(results).tail(2)
    assert list(rows["select_readout"]) == ["projector", "avg"]
    # a choice through another readout than the default is another budget (an experiment's grid runs both)
    assert list(rows["select_features"]) == ["contrastive", "contrastive"]
    assert rows["select_features_readout"].isna().tolist() == [True, False]
    from transfer import results as table

    assert list(table.read_results(results)["labels_per_class"].tail(2)) == [
        "4 in all (typiclust on contrastive)", "4 in all (typiclust on contrastive (avg))"]
    result = invoke("fine-tune", "--data", ws / "labeled", "--encoder", "random", "--labels", "4", "--selection",
                    "typiclust", "--select-readout", "projector", "--out", tmp_path / "ft3", "--results", results,
                    *TINY)
    assert_user_error(result, "--select-readout projector reads a pretrained encoder's projection head")


def test_a_budgets_name_says_the_selections_readout_when_it_is_not_the_encoders_default(ws):
    from pipelines.fine_tune import budget_name
    from transfer.config import FineTuneConfig, make

    def name(encoder, readout):
        return budget_name(make(FineTuneConfig, data="digits", labels=6, selection="kcenter",
                                select_encoder=str(ws / encoder), select_readout=readout))

    assert name("contrastive", None) == name("contrastive", "auto") == name("contrastive", "projector") == \
        "6 in all (kcenter on contrastive)"
    assert name("contrastive", "avg") == "6 in all (kcenter on contrastive (avg))"
    assert name("autoencoder", "avg") == name("autoencoder", None) == "6 in all (kcenter on autoencoder)"
    assert name("autoencoder", "multi") == "6 in all (kcenter on autoencoder (multi))"
