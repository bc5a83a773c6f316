"""The CLI, in-process with click's CliRunner, on tiny generated images."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import invoke, make_labeled_dir

from cli import main

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "8"]




def assert_user_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    make_labeled_dir(root / "labeled", per_class=10, classes=("h", "v", "d"))
    result = invoke("pretrain", "--data", root / "labeled", "--out", root / "enc", "--epochs", "2",
                    "--objective", "autoencoder", "--results", root / "results.csv", *TINY)
    assert result.exit_code == 0, result.output
    return root


def test_pretrain_writes_a_complete_run_dir_and_a_row(workspace):
    enc = workspace / "enc"
    for name in ("encoder.keras", "manifest.json", "history.csv", "config.json", "reconstructions.png"):
        assert (enc / name).is_file(), name
    manifest = json.loads((enc / "manifest.json").read_text())
    assert manifest["input_shape"] == [8, 8, 1] and manifest["objective"] == "autoencoder"
    assert {"recon_mse", "baseline_zeros_mse", "baseline_mean_mse"} <= set(manifest["metrics"])
    assert len(pd.read_csv(enc / "history.csv")) == 2
    df = pd.read_csv(workspace / "results.csv")
    row = df[df["command"] == "pretrain"].iloc[-1]
    assert row["run_dir"] == str(enc) and row["n_train"] == 27 and row["recon_mse"] > 0


def test_a_fine_tune_traces_each_step_once(workspace, tmp_path, monkeypatch):
    """Fit and evaluate of every model a fine-tune makes (the head, the training model, the
    classifier) trace their step once: state built inside a first trace makes TensorFlow trace
    it again, and evaluating other batch shapes traces anew (each trace costs what a whole fit
    of a few labeled images does)."""
    from collections import Counter

    import keras

    traces = Counter()
    for step in ("train_step", "test_step", "predict_step"):
        def counted(model, data, _step=getattr(keras.Model, step), _name=step):
            traces[_name, model.name, id(model)] += 1  # once per trace: the traced graph runs without Python
            return _step(model, data)

        monkeypatch.setattr(keras.Model, step, counted)
    result = invoke("fine-tune", "--data", workspace / "labeled", "--encoder", workspace / "enc", "--freeze", "none",
                    "--epochs", "3", "--labels-per-class", "3", "--out", tmp_path / "ft", "--results",
                    tmp_path / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    assert {"head", "augmented_classifier", "classifier"} <= {name for _, name, _ in traces}
    assert set(traces.values()) == {1}, traces


@pytest.mark.slow
def test_contrastive_pretrain_writes_views_and_agreement(workspace, tmp_path):
    result = invoke("pretrain", "--data", workspace / "labeled", "--out", tmp_path / "c", "--epochs", "2",
                    "--objective", "contrastive", "--results", tmp_path / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    # 3 held-out images (10% of 30), each view searched among the 3 others: chance 1/3, hits in thirds
    assert manifest["objective"] == "contrastive" and metrics["chance_agreement"] == pytest.approx(1 / 3)
    assert metrics["view_agreement"] * 3 == pytest.approx(round(metrics["view_agreement"] * 3))
    assert (tmp_path / "c" / "views.png").is_file() and not (tmp_path / "c" / "projector").exists()
    from transfer import artifacts

    enc, _ = artifacts.load_model_run(tmp_path / "c", "encoder")
    assert enc.name == "encoder" and enc.output.shape[-1] == 8  # the projection head was dropped


@pytest.mark.parametrize("encoder,freeze,method", [
    ("enc", "all", "autoencoder-frozen"),  # the fast loop's case; the others run with the slow tests
    pytest.param("random", "all", "random-frozen", marks=pytest.mark.slow),
    pytest.param("random", "none", "scratch", marks=pytest.mark.slow)])
def test_fine_tune_writes_the_row_it_claims(workspace, encoder, freeze, method):
    enc = workspace / "enc" if encoder == "enc" else "random"
    out = workspace / f"ft-{method}"
    result = invoke("fine-tune", "--data", workspace / "labeled", "--encoder", enc, "--freeze", freeze,
                    "--unfreeze-top", "0", "--labels-per-class", "3", "--epochs", "3", "--seed", "1", "--out", out,
                    "--results", workspace / "results.csv", *TINY)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(workspace / "results.csv")
    row = df[df["run_dir"] == str(out)].iloc[0]
    assert row["method"] == method and row["freeze"] == freeze
    assert row["n_train"] == 9 and row["n_test"] == 6 and row["seed"] == 1
    assert f"test accuracy {row['test_accuracy']:.4f}" in result.output
    assert (out / "classifier.keras").is_file()
    if freeze == "all":
        assert row["encoder_unchanged"]
    if encoder == "enc":
        # "auto" readout: chosen among avg/multi/stats by cross-validation, the choice and C recorded
        assert row["readout"] in ("avg", "multi", "stats") and row["readout_choice"].startswith("cv avg=")
        assert f"{row['readout']}=" in row["readout_choice"] and row["probe_c"] > 0
        assert row["test_in_pretraining"] == 6  # pretrained on the same folder: the leak is reported
        assert "test images were in the encoder's pretraining data" in result.output


@pytest.mark.slow
def test_compare_shows_mean_std_and_difference(workspace):
    for seed in (2, 3):
        for enc, freeze in (("random", "none"), (workspace / "enc", "all")):
            assert invoke("fine-tune", "--data", workspace / "labeled", "--encoder", enc, "--freeze", freeze,
                          "--labels-per-class", "2", "--epochs", "2", "--seed", seed,
                          "--results", workspace / "cmp.csv", "--out", workspace / f"c{seed}{freeze}",
                          *TINY).exit_code == 0
    result = invoke("compare", "--results", workspace / "cmp.csv", "--format", "csv")
    assert result.exit_code == 0, result.output
    import io

    table = pd.read_csv(io.StringIO(result.output))
    assert list(table.columns[:6]) == ["data", "method", "labels_per_class", "mean", "std", "n"]
    assert {"vs_scratch", "vs_best_baseline", "significant", "seconds"} <= set(table.columns)
    df = pd.read_csv(workspace / "cmp.csv")
    scratch = df[df["method"] == "scratch"]
    row = table[table["method"] == "scratch"].iloc[0]
    assert row["mean"] == pytest.approx(scratch["test_accuracy"].mean()) and row["n"] == 2
    assert row["seconds"] == pytest.approx(scratch["seconds"].mean())
    other = table[table["method"] != "scratch"].iloc[0]
    assert other["vs_scratch"] == pytest.approx(other["mean"] - row["mean"])
    md = invoke("compare", "--results", workspace / "cmp.csv", "--format", "markdown").output
    assert "| autoencoder-top1 | 2 | 2 |" in md


def test_predict_writes_one_row_per_image(workspace, tmp_path):
    model = tmp_path / "scratch"
    assert invoke("fine-tune", "--data", workspace / "labeled", "--encoder", "random", "--freeze", "none",
                  "--labels-per-class", "3", "--epochs", "1", "--out", model, "--results", tmp_path / "r.csv",
                  *TINY).exit_code == 0
    out = tmp_path / "pred.csv"
    result = invoke("predict", "--model", model, "--data", workspace / "labeled" / "h", "--out", out)
    assert result.exit_code == 0, result.output
    assert "predicted 10/10 (" in result.output  # progress
    df = pd.read_csv(out)
    assert len(df) == 10 and list(df.columns) == ["path", "predicted", "prob_d", "prob_h", "prob_v"]
    np.testing.assert_allclose(df[["prob_d", "prob_h", "prob_v"]].sum(axis=1), 1.0, atol=1e-4)
    assert_user_error(invoke("predict", "--model", model, "--data", workspace / "labeled", "--out", out),
                      "already exists")


def test_config_file_fills_options_and_command_line_wins(workspace, tmp_path):
    cfg = tmp_path / "ft.toml"
    cfg.write_text('encoder = "random"\nfreeze = "none"\nlabels-per-class = 2\nepochs = 1\nfilters = [4]\n'
                   'image_size = 8\nseed = 5\n')
    out = tmp_path / "run"
    result = invoke("fine-tune", "--config", cfg, "--data", workspace / "labeled", "--seed", "9",
                    "--out", out, "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["method"] == "scratch" and row["seed"] == 9 and row["n_train"] == 6 and row["epochs"] == 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["filters"] == [4] and saved["image_size"] == 8


# ---------------------------------------------------------------- errors: one line, exit 2, nothing damaged


@pytest.fixture
def guarded(workspace):
    """Snapshot results and the encoder dir; assert they are untouched after the test."""
    def files(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    results_before = (workspace / "results.csv").read_bytes()
    enc_before = files(workspace / "enc")
    yield workspace
    assert (workspace / "results.csv").read_bytes() == results_before
    assert files(workspace / "enc") == enc_before


def ft(ws, *extra):
    return invoke("fine-tune", "--results", ws / "results.csv", "--epochs", "1", *TINY, *extra)


def test_error_missing_path(guarded):
    assert_user_error(ft(guarded, "--data", guarded / "nope"), "data source not found")


def test_error_directory_without_images(guarded, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke("pretrain", "--data", tmp_path / "empty", "--out", tmp_path / "o",
                             "--results", guarded / "results.csv"), "no image files")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_error_class_with_too_few_images(guarded):
    assert_user_error(ft(guarded, "--data", guarded / "labeled", "--labels-per-class", "9"),
                      "fewer than labels_per_class=9")


def test_error_single_class(guarded, tmp_path):
    make_labeled_dir(tmp_path / "one", classes=("h",), per_class=4)
    assert_user_error(ft(guarded, "--data", tmp_path / "one"), "at least 2 classes")


def test_error_labels_per_class_zero(guarded):
    assert_user_error(ft(guarded, "--data", guarded / "labeled", "--labels-per-class", "0"),
                      "labels_per_class must be >= 1. Received: labels_per_class=0")


def test_error_encoder_without_manifest(guarded, tmp_path):
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "encoder.keras").write_bytes((guarded / "enc" / "encoder.keras").read_bytes())
    assert_user_error(ft(guarded, "--data", guarded / "labeled", "--encoder", tmp_path / "enc"), "no manifest.json")


def test_error_encoder_channels_cannot_serve_data(guarded, tmp_path):
    make_labeled_dir(tmp_path / "ms", per_class=4)
    for i in range(4):
        np.save(tmp_path / "ms" / "h" / f"m{i}.npy", np.random.rand(8, 8, 5).astype("float32"))
    (tmp_path / "ms" / "v").mkdir(exist_ok=True)
    assert_user_error(invoke("pretrain", "--data", tmp_path / "ms", "--out", tmp_path / "e5"), "mixed channel counts")
    assert_user_error(ft(guarded, "--data", guarded / "labeled", "--encoder", guarded / "enc", "--channels", "3"),
                      "takes 1-channel images")


def test_finished_run_is_not_retrained_and_other_dirs_are_refused(guarded, tmp_path):
    again = invoke("pretrain", "--data", guarded / "labeled", "--out", guarded / "enc", "--epochs", "1",
                   "--objective", "autoencoder", "--results", guarded / "results.csv", *TINY)
    assert again.exit_code == 0 and "is complete; pass --overwrite to start it over" in again.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert_user_error(invoke("pretrain", "--data", guarded / "labeled", "--out", tmp_path / "other",
                             "--results", guarded / "results.csv", *TINY), "is not a run directory")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_error_bad_config_files(guarded, tmp_path):
    (tmp_path / "bad.toml").write_text("epochs = = 3")
    assert_user_error(ft(guarded, "--config", tmp_path / "bad.toml", "--data", guarded / "labeled"), "not valid TOML")
    (tmp_path / "unknown.toml").write_text("epoch = 3")
    assert_user_error(ft(guarded, "--config", tmp_path / "unknown.toml", "--data", guarded / "labeled"),
                      "unknown option 'epoch'")


def test_corrupt_image_is_skipped_and_counted(workspace, tmp_path):
    make_labeled_dir(tmp_path / "d", per_class=6)
    (tmp_path / "d" / "h" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = ft(workspace, "--data", tmp_path / "d", "--labels-per-class", "2", "--results", tmp_path / "r.csv",
                "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file(s); first:" in result.output and "bad.png" in result.output
    assert pd.read_csv(tmp_path / "r.csv").iloc[0]["skipped_files"] == 1


def test_compare_errors(tmp_path):
    assert_user_error(invoke("compare", "--results", tmp_path / "none.csv"), "results table not found")
    (tmp_path / "r.csv").write_text("run_id,command,test_accuracy\na,pretrain,\n")
    assert_user_error(invoke("compare", "--results", tmp_path / "r.csv"), "no finished fine-tune runs")


@pytest.mark.slow
def test_unfreeze_top_trains_top_block_only_and_keeps_batchnorm(workspace, tmp_path):
    out = tmp_path / "top1"
    result = ft(workspace, "--data", workspace / "labeled", "--encoder", workspace / "enc", "--labels-per-class", "3",
                "--freeze", "all", "--unfreeze-top", "1", "--fine-tune-epochs", "2", "--out", out,
                "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["method"] == "autoencoder-top1" and row["unfreeze_top"] == 1
    from transfer import artifacts

    original, _ = artifacts.load_model_run(workspace / "enc", "encoder")
    tuned, _ = artifacts.load_model_run(out, "classifier")
    layers = {w.path: np.array(w) for w in tuned.weights}

    def tuned_weight(layer, name):
        return [v for k, v in layers.items() if k.endswith(f"{layer}/{name}")][0]

    top, bottom = "block2_conv1", "block1_conv1"
    assert not np.array_equal(tuned_weight(top, "kernel"), np.array(original.get_layer(top).kernel))
    np.testing.assert_array_equal(tuned_weight(bottom, "kernel"), np.array(original.get_layer(bottom).kernel))
    np.testing.assert_array_equal(tuned_weight("block2_bn1", "moving_mean"),
                                  np.array(original.get_layer("block2_bn1").moving_mean))
    np.testing.assert_array_equal(tuned_weight("block2_bn1", "gamma"), np.array(original.get_layer("block2_bn1").gamma))
    assert len(pd.read_csv(out / "history-unfreeze.csv")) == 2


def test_pixels_baseline_row_and_predict(workspace, tmp_path):
    out = tmp_path / "px"
    result = ft(workspace, "--data", workspace / "labeled", "--encoder", "pixels", "--labels-per-class", "4",
                "--out", out, "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["method"] == "pixels-logreg" and pd.isna(row["arch"]) and row["test_accuracy"] > 0.5
    assert invoke("predict", "--model", out, "--data", workspace / "labeled" / "v", "--out",
                  tmp_path / "p.csv").exit_code == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 10


@pytest.mark.slow
def test_experiment_runs_grid_then_skips_done_rows(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.toml").write_text(f'''
name = "tiny"
seeds = [0, 1]
labels_per_class = [2]
methods = ["autoencoder", "random-frozen", "scratch", "pixels-logreg", "scratch-semi"]
[pretrain]
data = "{workspace / 'labeled'}"
image_size = 8
filters = [4, 8]
epochs = 1
batch_size = 8
[fine_tune]
data = "{workspace / 'labeled'}"
image_size = 8
filters = [4, 8]
epochs = 2
unlabeled = "{workspace / 'labeled'}"
steps = 2
mu = 1
''')
    result = invoke("experiment", "exp.toml")
    assert result.exit_code == 0, result.output
    assert "run 1/10 " in result.output and ", ETA " in result.output and "run 10/10 " in result.output
    df = pd.read_csv(tmp_path / "tiny.csv")
    ft_rows = df[df["command"] == "fine-tune"]
    assert len(ft_rows) == 10 and (df["experiment"] == "tiny").all()
    assert sorted(ft_rows["method"].unique()) == ["autoencoder-finetuned", "pixels-logreg", "random-frozen",
                                                  "scratch", "scratch-semi"]
    assert ft_rows["unlabeled"].notna().sum() == 2  # only the -semi method uses the pool
    assert (df["command"] == "pretrain").sum() == 1
    # another experiment's row in the same table (here an earlier run of this grid kept under another name)
    table = tmp_path / "tiny.csv"
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    foreign = {**next(r for r in rows if r["command"] == "fine-tune"), "experiment": "tiny_before",
               "method": "foreign-method"}
    with table.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(foreign)
    again = invoke("experiment", "exp.toml")
    assert again.exit_code == 0 and "10 of 10 fine-tunes already in" in again.output
    assert "reusing the autoencoder encoder" in again.output
    assert "scratch-semi" in again.output and "foreign-method" not in again.output  # the summary: this grid's rows
    assert len(pd.read_csv(tmp_path / "tiny.csv")) == len(df) + 1
    # A second experiment naming the same runs directory reuses its encoder; its fine-tunes stay apart.
    spec = (tmp_path / "exp.toml").read_text().replace('name = "tiny"', 'name = "other"\nruns = "runs/tiny"')
    (tmp_path / "other.toml").write_text(spec.replace("seeds = [0, 1]", "seeds = [0]").replace(
        'methods = ["autoencoder", "random-frozen", "scratch", "pixels-logreg", "scratch-semi"]',
        'methods = ["autoencoder"]'))
    other = invoke("experiment", "other.toml")
    assert other.exit_code == 0 and "reusing the autoencoder encoder" in other.output, other.output
    row = pd.read_csv(tmp_path / "other.csv").iloc[0]
    first = ft_rows[(ft_rows["method"] == "autoencoder-finetuned") & (ft_rows["seed"] == 0)].iloc[0]
    assert Path(row["run_dir"]).parent.name == "other" and Path(first["run_dir"]).parent.name == "tiny"
    assert Path(first["run_dir"], "manifest.json").is_file() and Path(row["run_dir"], "manifest.json").is_file()


def test_experiment_file_errors(tmp_path):
    (tmp_path / "bad.toml").write_text('name = "x"\nseeds = [0]\nlabels_per_class = [1]\nmethods = ["magic"]\n')
    assert_user_error(invoke("experiment", tmp_path / "bad.toml"), "unknown method 'magic'")
    (tmp_path / "esc.toml").write_text('name = "../x"\nseeds = [0]\nlabels_per_class = [1]\nmethods = ["scratch"]\n')
    assert_user_error(invoke("experiment", tmp_path / "esc.toml"), "name may use letters")
    (tmp_path / "semi.toml").write_text('name = "s"\nseeds = [0]\nlabels_per_class = [1]\nmethods = ["scratch-semi"]\n'
                                        '[fine_tune]\ndata = "digits"\n')
    assert_user_error(invoke("experiment", tmp_path / "semi.toml"), "give them as unlabeled = SRC")


def test_divergence_stops_the_run_and_marks_it_failed(workspace, tmp_path):
    result = ft(workspace, "--data", workspace / "labeled", "--encoder", "random", "--freeze", "none",
                "--learning-rate", "1e38", "--epochs", "3", "--labels-per-class", "3", "--out", tmp_path / "run",
                "--results", tmp_path / "r.csv")
    assert_user_error(result, "training diverged")
    df = pd.read_csv(tmp_path / "r.csv")
    assert df["status"].tolist() == ["failed"] and pd.isna(df.loc[0, "test_accuracy"])
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
    assert_user_error(invoke("compare", "--results", tmp_path / "r.csv"), "no finished fine-tune runs")


@pytest.mark.slow
def test_freeze_audit_column_reports_a_violation(workspace, tmp_path, monkeypatch):
    """If anything touches the frozen encoder while the head is fit, the row says so."""
    from pipelines import fine_tune as pipeline

    original = pipeline.models.build_classifier

    def touching_build_classifier(features, head):
        bn = features.get_layer("encoder").get_layer("block1_bn1")
        bn.moving_mean.assign(bn.moving_mean + 1.0)  # a stand-in for a bug that updates BN statistics
        return original(features, head)

    monkeypatch.setattr(pipeline.models, "build_classifier", touching_build_classifier)
    result = ft(workspace, "--data", workspace / "labeled", "--encoder", workspace / "enc", "--freeze", "all",
                "--unfreeze-top", "0", "--labels-per-class", "3", "--out", tmp_path / "run",
                "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert not pd.read_csv(tmp_path / "r.csv").iloc[0]["encoder_unchanged"]


@pytest.mark.slow
def test_gan_encoder_fine_tunes_through_the_normal_cli(workspace, tmp_path):
    result = invoke("pretrain", "--data", workspace / "labeled", "--out", tmp_path / "gan", "--epochs", "2",
                    "--objective", "gan", "--results", tmp_path / "r.csv", "--no-plots", *TINY)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gan" / "samples" / "epoch_002.png").is_file()
    history = pd.read_csv(tmp_path / "gan" / "history.csv")
    assert {"d_loss", "g_loss"} <= set(history.columns) and np.isfinite(history[["d_loss", "g_loss"]]).all().all()
    result = ft(workspace, "--data", workspace / "labeled", "--encoder", tmp_path / "gan", "--labels-per-class", "3",
                "--out", tmp_path / "ft", "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
    assert row["method"] == "gan-finetuned" and row["objective"] == "gan"


def test_unwritable_results_and_out_are_refused_before_training(guarded, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = ft(guarded, "--data", guarded / "labeled", "--results", tmp_path / "file" / "r.csv",
                "--out", tmp_path / "run")
    assert_user_error(result, f"--results {tmp_path / 'file' / 'r.csv'} cannot be written")
    assert "fine-tuning" not in result.output  # refused before any data or model
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
    assert_user_error(ft(guarded, "--data", guarded / "labeled", "--results", tmp_path / "r.csv",
                         "--out", tmp_path / "file" / "run"), "cannot be created")
    assert_user_error(invoke("predict", "--model", guarded / "enc", "--data", guarded / "labeled",
                             "--out", tmp_path / "file" / "p.csv"), "--out")


def test_an_unexpected_failure_is_one_line_exit_1_and_a_saved_traceback(workspace, tmp_path, monkeypatch):
    from transfer import finetuning

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(finetuning, "_fit_frozen", broken)
    out = tmp_path / "run"
    result = ft(workspace, "--data", workspace / "labeled", "--freeze", "all", "--labels-per-class", "2", "--out", out,
                "--results", tmp_path / "r.csv")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: RuntimeError: simulated bug (the full traceback is in ")
    log = lines[0].rsplit("in ", 1)[1].rstrip(")")
    assert log.startswith(str(out) + ".partial") and "second line" in open(log).read()
    assert "Traceback" in open(log).read() and "broken" in open(log).read()
    assert not out.exists() and not (tmp_path / "r.csv").exists()  # nothing claimed, nothing damaged


@pytest.mark.slow
def test_adapt_bn_re_estimates_batchnorm_statistics_on_the_target_images(workspace, tmp_path):
    import keras

    out = tmp_path / "ft"
    result = invoke("fine-tune", "--data", workspace / "labeled", "--encoder", workspace / "enc", "--adapt-bn",
                    "--freeze", "all", "--unfreeze-top", "0", "--labels-per-class", "3", "--out", out, "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert "BatchNorm statistics re-estimated on 9 target images" in result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["adapt_bn"] and row["encoder_unchanged"]  # the audit starts after the adaptation
    pretrained = keras.saving.load_model(workspace / "enc" / "encoder.keras")
    tuned = keras.saving.load_model(out / "classifier.keras").get_layer("features").get_layer("encoder")
    before, after = (np.array(m.get_layer("block1_bn1").moving_mean) for m in (pretrained, tuned))
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(pretrained.get_layer("block1_conv1").kernel, tuned.get_layer("block1_conv1").kernel)


TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|.*(oneDNN|cuda|absl|UserWarning))")


@pytest.mark.slow
def test_normal_runs_are_quiet_and_verbose_shows_tensorflow(tmp_path):
    """No TensorFlow/absl/oneDNN/CUDA line on stdout or stderr unless --verbose (the GAN's
    training used to print a oneDNN E-line)."""
    import os
    import subprocess
    import sys

    make_labeled_dir(tmp_path / "d", per_class=6)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TRANSFER_VERBOSE")}

    def pretrain(name, *flags):  # the two side by side: a process start is mostly TensorFlow's import
        return subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *flags, "pretrain",
                                 "--data", str(tmp_path / "d"), "--objective", "gan", "--epochs", "1",
                                 "--out", str(tmp_path / name), "--results", str(tmp_path / f"{name}.csv"),
                                 *map(str, TINY)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=os.getcwd())

    procs = pretrain("quiet"), pretrain("loud", "--verbose")
    (quiet_out, quiet_err), (_, loud_err) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0, quiet_err
    noise = [l for l in (quiet_out + quiet_err).splitlines() if TF_LOG_LINE.match(l)]
    assert noise == [] and quiet_err == "", quiet_err
    assert procs[1].returncode == 0 and any(TF_LOG_LINE.match(l) for l in loud_err.splitlines()), loud_err


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["contrastive", "autoencoder", "gan"])
def test_mixed_precision_and_xla_switches_train_on_cpu(workspace, tmp_path, objective):
    """--precision mixed (bfloat16 compute) and --xla each pretrain and fine-tune; the loss stays
    finite, the row records the switch, and the global policy is restored afterwards."""
    import keras

    enc = tmp_path / "enc"
    result = invoke("pretrain", "--data", workspace / "labeled", "--objective", objective, "--epochs", "1",
                    "--precision", "mixed", "--out", enc, "--results", tmp_path / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    assert keras.mixed_precision.global_policy().name == "float32"
    loaded = keras.saving.load_model(enc / "encoder.keras")
    assert loaded.get_layer("block1_conv1").dtype_policy.compute_dtype == "bfloat16"
    result = invoke("fine-tune", "--data", workspace / "labeled", "--encoder", enc, "--xla", "--epochs", "1",
                    "--labels-per-class", "3", "--out", tmp_path / "ft", "--results", tmp_path / "r.csv",
                    "--batch-size", "4")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "r.csv")
    assert rows["precision"].tolist() == ["mixed", "float32"] and rows["xla"].tolist() == [False, True]
    assert np.isfinite(pd.read_csv(enc / "history.csv")["loss"]).all()
    assert np.isfinite(rows.iloc[1]["test_loss"])


@pytest.mark.parametrize("line, section, message", [
    ('seeds = "abc"', "", "seeds must be a list, each a whole number. Received: seeds='abc'"),
    ("seeds = [0, 1.5]", "", "seeds must be a list, each a whole number"),
    ("seeds = [-1]", "", "seeds must be >= 0"),
    ('labels_per_class = ["many"]', "", "labels_per_class holds whole numbers >= 1 or 'all'"),
    ('methods = "scratch"', "", "methods must be a list, each text"),
    ('methods = ["scrach"]', "", "scrach"),
    ('name = 3', "", "name must be text. Received: name=3"),
    ('epochs = "many"', "[fine_tune]", "[fine_tune]: epochs must be a whole number. Received: epochs='many'"),
    ("learning_rate = true", "[pretrain]", "[pretrain]: learning_rate must be a number"),
    ("epochs = 0", "[fine_tune]", "[fine_tune]: epochs must be >= 1"),
    ('filters = "4,8"', "[pretrain]", "filters must be a list, each a whole number"),
])
def test_every_experiment_key_is_checked_before_anything_runs(tmp_path, monkeypatch, line, section, message):
    monkeypatch.chdir(tmp_path)
    base = {"name": 'name = "bad"', "seeds": "seeds = [0]", "labels_per_class": "labels_per_class = [2]",
            "methods": 'methods = ["scratch"]'}
    key = line.split("=")[0].strip()
    top = [v for k, v in base.items() if not (not section and k == key)] + ([line] if not section else [])
    sections = {"[pretrain]": ['data = "digits"'], "[fine_tune]": ['data = "digits"']}
    if section:
        sections[section].append(line)
    text = "\n".join(top + [f"{s}\n" + "\n".join(v) for s, v in sections.items()]) + "\n"
    (tmp_path / "bad.toml").write_text(text)
    result = invoke("experiment", "bad.toml")
    assert_user_error(result, message)
    assert not (tmp_path / "bad.csv").exists() and not (tmp_path / "runs").exists()  # nothing ran


@pytest.mark.slow
def test_a_run_directory_another_process_writes_is_refused(workspace, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ft"
    holder = subprocess.Popen([sys.executable, "-c", "from transfer import artifacts; import sys, time\n"
                               f"with artifacts.run_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["fine-tune", "--data", workspace / "labeled", "--labels-per-class", "2", "--epochs", "1"],
                        ["pretrain", "--data", workspace / "labeled", "--epochs", "1", "--objective", "autoencoder"]):
            result = invoke(*command, "--out", out, "--results", tmp_path / "r.csv", *TINY)
            assert_user_error(result, f"run directory {out} is being written by another process (pid {holder.pid})")
        assert not (tmp_path / "ft.partial").exists() and not (tmp_path / "r.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    result = invoke("fine-tune", "--data", workspace / "labeled", "--labels-per-class", "2", "--epochs", "1",
                    "--out", out, "--results", tmp_path / "r.csv", *TINY)  # the holder died: the lock went with it
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "ft.lock").exists()


@pytest.mark.slow
def test_two_experiments_on_one_file_share_the_grid(workspace, tmp_path):
    import subprocess

    from conftest import cli_command

    (tmp_path / "exp.toml").write_text(f'''
name = "both"
seeds = [0, 1]
labels_per_class = [2]
methods = ["autoencoder", "scratch", "random-frozen"]
[pretrain]
data = "{workspace / 'labeled'}"
image_size = 8
filters = [4, 8]
epochs = 3
batch_size = 8
[fine_tune]
data = "{workspace / 'labeled'}"
image_size = 8
filters = [4, 8]
epochs = 20
''')
    import os

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen(cli_command("experiment", "exp.toml"), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    df = pd.read_csv(tmp_path / "both.csv")
    ft = df[df["command"] == "fine-tune"]
    assert len(ft) == 6 and not ft.duplicated(["method", "labels_per_class", "seed"]).any()
    assert (df["command"] == "pretrain").sum() == 1
    ran = [len(re.findall(r"test accuracy \d\.\d{3} in", o)) for o in outputs]
    assert sum(ran) == 6, outputs  # each fine-tune ran once, in one of the two
    for history in (tmp_path / "runs").rglob("history*.csv"):
        epochs = pd.read_csv(history)["epoch"].tolist()
        assert epochs == list(range(len(epochs))), history
    assert not list((tmp_path / "runs").rglob("error-*.log")) and not list((tmp_path / "runs").rglob("*.partial"))


@pytest.mark.slow
def test_results_that_are_not_a_table_are_refused_before_training(workspace, tmp_path, monkeypatch):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/bin/false")
    link = tmp_path / "results.csv"
    link.symlink_to(passwd)
    for command in (["fine-tune", "--data", workspace / "labeled", "--labels-per-class", "2"],
                    ["pretrain", "--data", workspace / "labeled", "--objective", "autoencoder"]):
        result = invoke(*command, "--out", tmp_path / "run", "--results", link, *TINY)
        assert_user_error(result, "is not a results table")
    assert passwd.read_text().endswith("/bin/false") and link.is_symlink()
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.toml").write_text(f'name = "e"\nresults = "{link}"\nseeds = [0]\nlabels_per_class = [2]\n'
                                     f'methods = ["scratch"]\n[fine_tune]\ndata = "{workspace / "labeled"}"\n')
    assert_user_error(invoke("experiment", "e.toml"), "is not a results table")


def test_an_untested_keras_or_tensorflow_is_refused_with_one_line(tmp_path, monkeypatch):
    """Private Keras/TF surfaces are fenced in transfer.internals for the tested versions: any
    other version is one Error line and exit 2 before a command that uses them runs, unless the
    user insists."""
    import keras

    from transfer import internals

    monkeypatch.delenv(internals.UNTESTED_ENV, raising=False)
    major, minor = map(int, keras.__version__.split(".")[:2])
    monkeypatch.setitem(internals.TESTED, "keras", ((major, minor + 1), (major, minor + 2)))
    result = CliRunner().invoke(main, ["evaluate", "--encoder", str(tmp_path / "none"), "--data", "digits"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: keras {keras.__version__} is outside the versions"), lines
    assert f"keras>={major}.{minor + 1},<{major}.{minor + 3}" in lines[0]
    monkeypatch.setenv(internals.UNTESTED_ENV, "1")
    result = CliRunner().invoke(main, ["evaluate", "--encoder", str(tmp_path / "none"), "--data", "digits"])
    assert "outside the versions" not in result.output and "not found" in result.output
    internals.check_versions({"keras": "3.15.9", "tensorflow": "2.21.0rc1"})  # dev suffixes read as their minor


def test_the_declared_dependency_range_is_the_tested_one():
    """pyproject.toml's bounds and transfer.internals.TESTED say the same."""
    import tomllib

    from transfer import internals

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, ((lo_major, lo_minor), (hi_major, hi_minor)) in internals.TESTED.items():
        assert f"{name}>={lo_major}.{lo_minor},<{hi_major}.{hi_minor + 1}" in deps


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear-head", "unfreeze", "fixmatch", "scratch"])
def test_images_per_second_counts_what_each_mode_trained_on(workspace, mode):
    """The row's images_trained, train_seconds and images_per_second agree with what ran: the
    exact linear head is one pass of the labeled images; unfreezing adds its epochs; FixMatch
    adds its steps' labeled and two views of its unlabeled images (not the supervised epochs)."""
    out = workspace / f"pace-{mode}"
    args = {"linear-head": ["--encoder", workspace / "enc", "--freeze", "all", "--unfreeze-top", "0"],
            "unfreeze": ["--encoder", workspace / "enc", "--freeze", "all", "--unfreeze-top", "1",
                         "--fine-tune-epochs", "3"],
            "fixmatch": ["--encoder", workspace / "enc", "--freeze", "all", "--unfreeze-top", "0",
                         "--unlabeled", workspace / "labeled", "--steps", "4", "--mu", "2"],
            "scratch": ["--encoder", "random", "--freeze", "none"]}[mode]
    result = invoke("fine-tune", "--data", workspace / "labeled", *args, "--labels-per-class", "3", "--epochs", "5",
                    "--out", out, "--results", workspace / "pace.csv", *TINY)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(workspace / "pace.csv").set_index("run_dir").loc[str(out)]
    n = row["n_train"]
    expected = {"linear-head": n, "unfreeze": n + 3 * n, "fixmatch": n + 4 * 8 * (1 + 2 * 2), "scratch": 5 * n}[mode]
    assert row["images_trained"] == expected
    assert 0 < row["train_seconds"] <= row["seconds"] and row["cpu_seconds"] > 0
    assert row["images_per_second"] == pytest.approx(expected / row["train_seconds"], rel=0.01, abs=0.05)  # 0.1 rounded


def test_every_fine_tune_writes_its_confusion_matrix_and_most_confident_mistakes(workspace, tmp_path):
    out = tmp_path / "ft"
    result = invoke("fine-tune", "--data", workspace / "labeled", "--encoder", "random", "--freeze", "none",
                    "--labels-per-class", "2", "--epochs", "2", "--out", out, "--results", tmp_path / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
    confusion = pd.read_csv(out / "confusion.csv", index_col=0)
    assert list(confusion.columns) == ["d", "h", "v"] and list(confusion.index) == ["d", "h", "v"]
    counts = confusion.to_numpy()
    assert counts.sum() == row["n_test"]
    assert np.trace(counts) / counts.sum() == pytest.approx(row["test_accuracy"], abs=1e-6)
    assert row["mistakes"] == counts.sum() - np.trace(counts)
    wrong = pd.read_csv(out / "mistakes.csv")
    assert len(wrong) == min(16, row["mistakes"]) and (wrong["true"] != wrong["predicted"]).all()
    assert list(wrong["probability"]) == sorted(wrong["probability"], reverse=True)
    assert (out / "confusion.png").is_file() and ((out / "mistakes.png").is_file() or len(wrong) == 0)


def test_the_default_pretraining_cost_is_bounded_by_images_seen_not_only_epochs():
    """No --epochs: 300 passes, fewer when they would train on more than 500,000 images."""
    from pipelines import pretrain
    from transfer.config import PretrainConfig

    class FakeRun:
        def __init__(self):
            self.noted, self.lines = {}, []

        def note(self, **fields):
            self.noted.update(fields)

        def log(self, line):
            self.lines.append(line)

    cfg = PretrainConfig(data="digits", out="x")
    for n, epochs in ((1_294, 300), (1_666, 300), (1_667, 300), (1_700, 295), (5_000, 100), (7_200, 70),
                      (10_000, 50), (100_000, 5), (2_000_000, 1)):
        run = FakeRun()
        assert pretrain._resolve_epochs(cfg, n, run).epochs == epochs and run.noted == {"epochs": epochs}
        assert bool(run.lines) == (epochs < 300)
    assert pretrain._resolve_epochs(PretrainConfig(data="d", out="x", epochs=300), 10_000, FakeRun()).epochs == 300


def test_the_default_fine_tune_trains_at_least_500_steps_on_a_few_labels():
    """No --epochs: 100 passes over the labeled images, more when they would make fewer than 500
    steps; the epochs resolved are noted for the row (a given --epochs is kept as is)."""
    from pipelines import fine_tune
    from transfer.config import FineTuneConfig, make

    class FakeRun:
        noted = {}

        def note(self, **fields):
            self.noted = fields

    cfg = make(FineTuneConfig, data="digits", labels_per_class=2)
    # labeled images -> steps a pass of 32 -> epochs
    for n, epochs in ((1, 500), (20, 500), (32, 500), (33, 250), (40, 250), (100, 125), (160, 100), (5_000, 100)):
        run = FakeRun()
        got = fine_tune._resolve_epochs(cfg, n, run)
        assert got.epochs == epochs and run.noted == {"epochs": epochs}
        assert epochs * -(-n // 32) >= 500
    assert fine_tune._resolve_epochs(make(FineTuneConfig, data="d", batch_size=8), 16, FakeRun()).epochs == 250
    given = make(FineTuneConfig, data="d", epochs=3)
    assert fine_tune._resolve_epochs(given, 20, FakeRun()) is given


def test_help_and_compare_never_import_tensorflow(tmp_path):
    """`transfer --help`, a command's --help and `compare` read the options' names from
    transfer.vocabulary: they start without TensorFlow (or scikit-learn), in well under a second."""
    script = ("import sys\nfrom cli import main\nfor args in (['--help'], ['fine-tune', '--help'], "
              f"['compare', '--results', {str(tmp_path / 'none.csv')!r}]):\n"
              "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
              "print('loaded:', sorted(m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "loaded: []" in done.stdout, done.stdout + done.stderr
    assert "--labels-per-class" in done.stdout and "not found" in done.stderr


def test_the_vocabulary_agrees_with_what_its_owners_implement():
    from transfer import architectures, builtins, objectives, vocabulary

    assert vocabulary.OBJECTIVES == objectives.OBJECTIVES and vocabulary.TWO_VIEW == objectives.TWO_VIEW
    assert vocabulary.PRESETS == tuple(sorted(architectures.PRESETS))
    assert vocabulary.BUILTINS == tuple(builtins.names())


def test_labels_that_miss_a_class_of_the_test_data_are_scored_honestly(tmp_path):
    """select -> label -> fine-tune --test-data: a choice that covers 2 of the test set's 3 classes
    trains a 3-class classifier; the third class's test images count as errors; the row records
    how many classes had labels and the terminal names the one that had none."""
    import pandas as pd

    from conftest import make_labeled_dir

    make_labeled_dir(tmp_path / "labeled", per_class=6, classes=("h", "v"), size=8)
    make_labeled_dir(tmp_path / "test", per_class=4, classes=("d", "h", "v"), size=8, seed=1)
    result = invoke("fine-tune", "--data", tmp_path / "labeled", "--test-data", tmp_path / "test", "--encoder",
                    "pixels", "--image-size", "8", "--labels-per-class", "3", "--out", tmp_path / "ft",
                    "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert "no labeled images of 1 of 3 classes (d)" in result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
    assert row["classes_labeled"] == 2 and row["n_train"] == 6
    assert row["test_accuracy"] <= 8 / 12 + 1e-9  # the 4 'd' images are errors
    assert json.loads((tmp_path / "ft" / "manifest.json").read_text())["class_names"] == ["d", "h", "v"]
    one = make_labeled_dir(tmp_path / "one", per_class=4, classes=("h",), size=8)
    result = invoke("fine-tune", "--data", one, "--test-data", tmp_path / "test", "--encoder", "pixels",
                    "--image-size", "8", "--out", tmp_path / "ft1", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2 and result.output.count("Error:") == 1 and not (tmp_path / "ft1").exists()


def test_every_option_is_made_from_its_config_field():
    """The CLI is made from the config dataclasses: each command's parameters are exactly its
    config's fields that carry help (plus --config), each shown by --help with that help, a
    choice's values and a field's default as the option's; nothing is declared twice."""
    import click
    from click.testing import CliRunner

    import cli
    from cli import main

    for name, cls in cli.COMMANDS.items():
        command = main.commands[name]
        fields = {f.name: f for f, _ in cli.config.option_fields(cls)}
        params = {p.name: p for p in command.params if not getattr(p, "hidden", False) and p.name != "config"}
        assert set(params) == set(fields), name
        assert command.help == cls.__doc__
        helped = CliRunner().invoke(main, [name, "--help"], terminal_width=400).output
        for field in fields.values():
            param = params[field.name]
            if isinstance(param, click.Option):
                assert " ".join(field.metadata["help"].split())[:60] in " ".join(helped.split()), (name, field.name)
            if "choices" in field.metadata:
                assert list(param.type.choices) == list(field.metadata["choices"])
        hidden = {p.name for p in command.params if getattr(p, "hidden", False)}
        assert hidden == {f"was_{f.metadata['was']}" for f in fields.values() if "was" in f.metadata}
    cfg = cli.config.make(cli.config.FineTuneConfig, data="digits")  # a field's default is the option's
    assert main.commands["fine-tune"].make_context("fine-tune", ["--data", "digits"]).params["mu"] == cfg.fixmatch.mu
