"""The CLI, in-process with click's CliRunner, on tiny generated images."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_labeled_dir

from cli import main

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "8"]


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


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
                    "--results", root / "results.csv", *TINY)
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


@pytest.mark.parametrize("encoder,freeze,method", [("enc", "all", "autoencoder-frozen"),
                                                   ("random", "all", "random-frozen"),
                                                   ("random", "none", "scratch")])
def test_fine_tune_writes_the_row_it_claims(workspace, encoder, freeze, method):
    enc = workspace / "enc" if encoder == "enc" else "random"
    out = workspace / f"ft-{method}"
    result = invoke("fine-tune", "--data", workspace / "labeled", "--encoder", enc, "--freeze", freeze,
                    "--labels-per-class", "3", "--epochs", "3", "--seed", "1", "--out", out,
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
        assert row["test_in_pretraining"] == 6  # pretrained on the same folder: the leak is reported
        assert "test images were in the encoder's pretraining data" in result.output


def test_compare_shows_mean_std_and_difference(workspace):
    for seed in (2, 3):
        for enc, freeze in (("random", "none"), (workspace / "enc", "all")):
            assert invoke("fine-tune", "--data", workspace / "labeled", "--encoder", enc, "--freeze", freeze,
                          "--labels-per-class", "2", "--epochs", "2", "--seed", seed,
                          "--results", workspace / "cmp.csv", "--out", workspace / f"c{seed}{freeze}",
                          *TINY).exit_code == 0
    result = invoke("compare", "--results", workspace / "cmp.csv", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("data,method,labels_per_class,mean,std,n,vs_scratch")
    df = pd.read_csv(workspace / "cmp.csv")
    scratch = df[df["method"] == "scratch"]["test_accuracy"]
    row = [line for line in lines if ",scratch," in line][0].split(",")
    assert float(row[3]) == pytest.approx(scratch.mean()) and int(row[5]) == 2
    md = invoke("compare", "--results", workspace / "cmp.csv", "--format", "markdown").output
    assert "| autoencoder-frozen | 2 | 2 |" in md


def test_predict_writes_one_row_per_image(workspace):
    model = workspace / "ft-scratch"
    out = workspace / "pred.csv"
    result = invoke("predict", "--model", model, "--data", workspace / "labeled" / "h", "--out", out)
    assert result.exit_code == 0, result.output
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
    results_before = (workspace / "results.csv").read_bytes()
    enc_before = {p.name: p.read_bytes() for p in (workspace / "enc").iterdir()}
    yield workspace
    assert (workspace / "results.csv").read_bytes() == results_before
    assert {p.name: p.read_bytes() for p in (workspace / "enc").iterdir()} == enc_before


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


def test_error_existing_run_dir_kept(guarded):
    assert_user_error(invoke("pretrain", "--data", guarded / "labeled", "--out", guarded / "enc", "--epochs", "1",
                             "--results", guarded / "results.csv", *TINY), "already exists; pass --overwrite")


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
