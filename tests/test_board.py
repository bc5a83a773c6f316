"""--tensorboard: Keras's TensorBoard logs for every fit, preview images, one HParams record a
run; read back from the event files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from click.testing import CliRunner
from conftest import make_labeled_dir

from cli import main
from pipelines import experiment
from transfer.config import FineTuneConfig

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "8"]


def events(folder: Path) -> dict:
    """{tag: [(step, value or plugin name)]} of every event file below `folder`."""
    found = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                value = plugin if plugin in ("hparams", "images") else float(tf.make_ndarray(v.tensor))
                found.setdefault(v.tag, []).append((event.step, value))
    return found


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    make_labeled_dir(root / "labeled", per_class=10, classes=("h", "v", "d"))

    def invoke(*args):
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return pd.read_csv(root / "results.csv").iloc[-1]

    rows = {"pretrain": invoke("pretrain", "--data", root / "labeled", "--out", root / "enc", "--epochs", "3",
                               "--tensorboard", root / "tb", "--results", root / "results.csv", *TINY)}
    rows["fine-tune"] = invoke("fine-tune", "--data", root / "labeled", "--encoder", root / "enc",
                               "--labels-per-class", "3", "--epochs", "2", "--out", root / "ft",
                               "--tensorboard", root / "tb", "--results", root / "results.csv", *TINY)
    rows["fixmatch"] = invoke("fine-tune", "--data", root / "labeled", "--encoder", root / "enc", "--freeze", "all",
                              "--unfreeze-top", "0", "--unlabeled", root / "labeled", "--steps", "4", "--mu", "2",
                              "--labels-per-class", "3", "--out", root / "semi", "--tensorboard", root / "tb",
                              "--results", root / "results.csv", *TINY)
    return root / "tb", rows


@pytest.mark.slow
def test_pretraining_logs_its_epochs_learning_rate_preview_and_hparams(boards):
    tb, rows = boards
    run = tb / rows["pretrain"]["run_id"]
    fit = events(run / "pretrain")
    assert [step for step, _ in fit["epoch_loss"]][:3] == [0, 1, 2]  # train/ (and validation/) per epoch
    assert "epoch_learning_rate" in fit
    assert events(run / "images")["views"] == [(3, "images")]
    record = events(run)
    assert ("hparams" in {v for _, v in record["_hparams_/session_start_info"]})
    assert record["view_agreement"][0][1] == pytest.approx(rows["pretrain"]["view_agreement"], abs=1e-6)


@pytest.mark.slow
def test_fine_tune_logs_each_phase_and_its_test_accuracy_as_an_hparams_metric(boards):
    tb, rows = boards
    run = tb / rows["fine-tune"]["run_id"]
    phases = {p.name for p in run.iterdir() if p.is_dir()}
    assert phases == {"train"}  # the linear head is solved exactly (no fit to log), then everything trains
    assert len([s for s, _ in events(run / "train")["epoch_loss"]]) >= 2
    record = events(run)
    assert record["test_accuracy"][0][1] == pytest.approx(rows["fine-tune"]["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_fixmatch_logs_its_mask_rate(boards):
    tb, rows = boards
    semi = events(tb / rows["fixmatch"]["run_id"] / "semi")
    assert "epoch_mask_rate" in semi and np.isfinite(semi["epoch_mask_rate"][-1][1])


def test_an_experiments_tensorboard_reaches_every_run():
    spec = {"tensorboard": "tb/grid", "fine_tune": {"data": "digits"}, "pretrain": {"data": "digits"}}
    assert experiment._section(spec, "fine_tune", FineTuneConfig, "f.toml")["tensorboard"] == "tb/grid"
    own = {**spec, "fine_tune": {"data": "digits", "tensorboard": "tb/own"}}
    assert experiment._section(own, "fine_tune", FineTuneConfig, "f.toml")["tensorboard"] == "tb/own"
