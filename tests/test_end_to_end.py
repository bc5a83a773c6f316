"""One end-to-end run on real data (scikit-learn's digits), few epochs."""

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main


@pytest.mark.slow
def test_demo_on_digits_runs_every_method_and_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main,
        ["demo", "--out", str(out), "--pretrain-epochs", "2", "--fine-tune-epochs", "20",
         "--labels-per-class", "5,10", "--seeds", "0"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out / "results.csv")
    ft = df[df["command"] == "fine-tune"]
    assert sorted(ft["method"].unique()) == ["contrastive-finetuned", "scratch"]
    assert sorted(ft["labels_per_class"].astype(int).unique()) == [5, 10]
    assert len(ft) == 4
    # digits is a real task: every method must be far above the 10% of guessing
    assert (ft["test_accuracy"] > 0.5).all(), ft[["method", "test_accuracy"]]
    assert (ft["test_in_pretraining"].dropna() == 0).all()  # the test split never reached pretraining
    for method in ("contrastive-finetuned", "scratch"):
        assert method in result.output
    assert "about 3 minutes on 2 CPU cores" in result.output.splitlines()[0]  # what to expect, first
    assert "time: pretrain" in result.output and "(total " in result.output
    assert "run 1/4 " in result.output and ", ETA " in result.output and "run 4/4 " in result.output
