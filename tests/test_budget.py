"""Label budgets as totals (fine-tune --labels N --selection ...): a blind draw may miss classes."""

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir

from transfer import budget, heads
from transfer import selection as selection_module
from transfer.listing import Listing

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "8"]


def test_a_probe_fit_on_some_classes_never_predicts_the_others():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(6, 4)) + 3, rng.normal(size=(6, 4)) - 3]).astype(np.float32)
    labels = np.array([0] * 6 + [2] * 6)  # class 1 of 3 has no label
    weights, bias, _, score = heads.cross_validated(z, labels, 3)
    assert weights.shape == (4, 3) and bias[1] == heads.ABSENT and np.all(weights[:, 1] == 0)
    assert score is not None  # folds over the classes that are there
    predicted = np.argmax(rng.normal(size=(50, 4)) @ weights + bias, axis=1)
    assert 1 not in predicted
    weights, bias, _, score = heads.cross_validated(z[:6], labels[:6], 3)  # one class only
    assert np.all(np.argmax(rng.normal(size=(20, 4)) @ weights + bias, axis=1) == 0) and score is None


def test_stratified_spreads_the_total_and_random_is_blind():
    labels = np.repeat(np.arange(4), 25)
    source = Listing(src="m", paths=[], ids=np.arange(100).astype(str), labels=labels, class_names=list("abcd"))
    chosen = budget.choose("stratified", source, np.arange(100), 10, seed=0)
    assert len(chosen) == 10 and sorted(np.bincount(labels[chosen])) == [2, 2, 3, 3]
    coverage = [len(set(labels[budget.choose("random", source, np.arange(100), 4, seed=s)])) for s in range(30)]
    assert min(coverage) < 4 and max(coverage) == 4  # a blind draw of 4 over 4 classes often misses one
    with pytest.raises(Exception, match="more than the 100 images"):
        budget.choose("random", source, np.arange(100), 101, seed=0)




@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    make_labeled_dir(root / "labeled", per_class=10, classes=("h", "v", "d"))
    return root


def test_fine_tune_with_a_total_budget_records_it_and_a_missing_class_is_never_predicted(labeled, tmp_path):
    results = tmp_path / "r.csv"
    result = invoke("fine-tune", "--data", labeled / "labeled", "--encoder", "random", "--freeze", "all",
                    "--unfreeze-top", "0", "--labels", "2", "--seed", "0", "--out", tmp_path / "ft",
                    "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(results).iloc[-1]
    assert row["labels"] == 2 and row["selection"] == "random" and row["n_train"] == 2
    assert pd.isna(row["labels_per_class"]) and row["labeled_classes"] <= 2  # the budget is its columns
    assert "2 labels in all, chosen by random" in result.output
    classifier = keras.saving.load_model(tmp_path / "ft" / "classifier.keras")
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    predicted = set(np.argmax(classifier.predict(x, verbose=0), axis=1).tolist())
    assert len(predicted) <= row["labeled_classes"]  # a class without a label is never predicted
    # the run directory lists the images it learned from, as select writes them: the next round's --exclude
    learned = pd.read_csv(tmp_path / "ft" / "labeled.csv", dtype=str)
    assert list(learned.columns) == ["path", "label"] and len(learned) == 2
    assert [Path(p).parent.name for p in learned["path"]] == learned["label"].tolist()
    assert learned["label"].nunique() == row["labeled_classes"]
    more = invoke("select", "--data", labeled / "labeled", "--encoder", "pixels", "--image-size", "8", "--labels",
                  "3", "--exclude", tmp_path / "ft" / "labeled.csv", "--out", tmp_path / "next.csv", "--results",
                  results)
    assert more.exit_code == 0 and pd.read_csv(results).iloc[-1]["n_excluded"] == 2, more.output
    assert not set(pd.read_csv(tmp_path / "next.csv", dtype=str)["path"]) & set(learned["path"])


@pytest.mark.parametrize("selection", ["stratified", *selection_module.BY_FEATURES])
@pytest.mark.slow  # the fast loop's total budget: test_fine_tune_with_a_total_budget_records_it_...
def test_fine_tune_selections(labeled, tmp_path, selection):
    results = tmp_path / "r.csv"
    result = invoke("fine-tune", "--data", labeled / "labeled", "--encoder", "random", "--freeze", "none",
                    "--labels", "6", "--selection", selection, "--epochs", "2", "--out", tmp_path / "ft",
                    "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(results).iloc[-1]
    assert row["selection"] == selection and row["n_train"] == 6
    if selection == "stratified":
        assert row["labeled_classes"] == 3
    if selection != "stratified":
        assert f"chosen by {selection} on pixels" in result.output


@pytest.mark.slow
def test_total_budgets_are_compared_and_read_as_totals(labeled, tmp_path):
    results = tmp_path / "r.csv"
    for seed in (0, 1):
        for encoder, freeze in (("random", "none"), ("random", "all")):
            assert invoke("fine-tune", "--data", labeled / "labeled", "--encoder", encoder, "--freeze", freeze,
                          "--unfreeze-top", "0", "--labels", "6", "--selection", "stratified", "--epochs", "2",
                          "--seed", seed, "--out", tmp_path / f"ft-{seed}-{freeze}", "--results", results,
                          *TINY).exit_code == 0
    result = invoke("compare", "--results", results)
    assert result.exit_code == 0, result.output
    assert "6 in all (stratified)" in result.output
    stored = pd.read_csv(results, dtype=str)  # the budget as data; its name is made when the table is read
    assert stored["labels_per_class"].isna().all()
    assert set(stored["labels"]) == {"6"} and set(stored["selection"]) == {"stratified"}
    from transfer import comparison, report
    from transfer import results as table

    named = comparison.budgets(table.read_results(results))
    assert set(named) == {"6 in all (stratified)"}
    assert report._describe("labels_per_class", "6 in all (stratified)", named) == "6 labels in all (stratified)"
    assert report._describe("labels_per_class", 5, named) == "5 labels/class"


@pytest.mark.parametrize("args,message", [
    (["--labels", "3", "--labels-per-class", "1"], "not both"),
    (["--selection", "typiclust"], "give --labels N"),
    (["--labels", "4", "--select-encoder", "pixels"], "serves --selection typiclust, probcover, kcenter"),
    (["--labels", "1000"], "more than the"),
    (["--labels", "4", "--selection", "typiclust", "--purity", "0.8"], "--purity is probcover's"),
    (["--labels", "4", "--selection", "probcover", "--purity", "1"], "purity must be in (0, 1)"),
])
def test_bad_budgets_are_one_error_line(labeled, tmp_path, args, message):
    result = invoke("fine-tune", "--data", labeled / "labeled", "--encoder", "random", *args,
                    "--out", tmp_path / "ft", "--results", tmp_path / "r.csv", *TINY)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_an_experiment_grid_over_total_budgets_and_selections(labeled, tmp_path):
    """budgets x selections x methods x seeds: every cell runs once, named by its selection, and a
    second run of the file finds them all done."""
    spec = """
name = "budget-grid"
results = "RESULTS"
runs = "RUNS"
seeds = [0]
budgets = [6]
selections = ["random", "typiclust-pixels", "kcenter"]
methods = ["scratch", "random-frozen"]
[fine_tune]
data = "DATA"
image_size = 8
filters = [4, 8]
batch_size = 8
epochs = 2
unfreeze_top = 0
"""
    path = tmp_path / "grid.toml"
    path.write_text(spec.replace("RESULTS", str(tmp_path / "grid.csv")).replace("RUNS", str(tmp_path / "runs"))
                    .replace("DATA", str(labeled / "labeled")))
    result = invoke("experiment", path)
    assert result.exit_code == 0, result.output
    from transfer import results

    rows = results.read_results(tmp_path / "grid.csv")  # a total budget named from its columns
    rows = rows[rows["command"] == "fine-tune"]
    assert len(rows) == 6 and set(rows["selection"]) == {"random", "typiclust", "kcenter"}
    assert set(rows["labels_per_class"]) == {"6 in all (random)", "6 in all (typiclust on pixels)",
                                             "6 in all (kcenter on pixels)"}
    assert (rows["n_train"] == 6).all()
    again = invoke("experiment", path)
    assert "6 of 6 fine-tunes already in" in again.output and len(pd.read_csv(tmp_path / "grid.csv")) == len(rows)


def test_a_dry_run_before_the_encoder_is_pretrained_names_its_choices_by_the_objective(labeled, tmp_path):
    """On a fresh checkout the grid's encoder is not pretrained yet: --dry-run names the cells
    chosen on it as the real run will ('typiclust on contrastive'), so the table's rows count as done."""
    from transfer import results

    table = tmp_path / "grid.csv"
    results.append_row(table, {"run_id": "done", "command": "fine-tune", "status": "ok", "experiment": "g",
                               "method": "scratch", "labels_per_class": "6 in all (typiclust on contrastive)",
                               "seed": 0, "test_accuracy": 0.5})
    path, runs, data = tmp_path / "grid.toml", tmp_path / "runs", labeled / "labeled"
    path.write_text(f'name = "g"\nresults = "{table}"\nruns = "{runs}"\nseeds = [0, 1]\nbudgets = [6]\n'
                    f'selections = ["typiclust-contrastive"]\nmethods = ["scratch"]\n'
                    f'[fine_tune]\ndata = "{data}"\nimage_size = 8\n')
    result = invoke("experiment", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "pretraining contrastive" in result.output and not runs.exists()
    assert "1 of 2 fine-tunes already in" in result.output, result.output
    assert "labels=6 in all (typiclust on contrastive) seed=1" in result.output


def test_a_grid_whose_fine_tunes_are_all_in_the_table_pretrains_nothing(labeled, tmp_path):
    """A fresh checkout of a finished grid (its table committed, its runs directory not): the
    real run has nothing to fine-tune, so it does not pretrain the encoder the cells were chosen
    on (minutes to hours for nothing) and says why."""
    from transfer import results

    table = tmp_path / "grid.csv"
    for seed in (0, 1):
        results.append_row(table, {"run_id": f"done{seed}", "command": "fine-tune", "status": "ok", "experiment": "g",
                                   "method": "scratch", "labels_per_class": "6 in all (typiclust on contrastive)",
                                   "seed": seed, "test_accuracy": 0.5})
    path, runs, data = tmp_path / "grid.toml", tmp_path / "runs", labeled / "labeled"
    path.write_text(f'name = "g"\nresults = "{table}"\nruns = "{runs}"\nseeds = [0, 1]\nbudgets = [6]\n'
                    f'selections = ["typiclust-contrastive"]\nmethods = ["scratch"]\n'
                    f'[pretrain]\ndata = "{data}"\nimage_size = 8\nepochs = 1\n'
                    f'[fine_tune]\ndata = "{data}"\nimage_size = 8\n')
    result = invoke("experiment", path)
    assert result.exit_code == 0, result.output
    assert "not pretraining contrastive: every fine-tune that needs it is in" in result.output, result.output
    assert "2 of 2 fine-tunes already in" in result.output and not runs.exists()
    assert len(pd.read_csv(table)) == 2  # no pretrain row either


@pytest.mark.parametrize("bad,message", [("selections = [\"entropy\"]", "unknown selection 'entropy'"),
                                         ("budgets = [0]", "budgets must be >= 1"),
                                         ("budgets = []\nlabels_per_class = [2]\nselections = [\"random\"]",
                                          "give budgets too")])
def test_bad_budget_grids_are_refused(tmp_path, bad, message):
    path = tmp_path / "bad.toml"
    budgets = "" if bad.startswith("budgets") else "budgets = [5]\n"
    path.write_text(f'name = "x"\nseeds = [0]\nmethods = ["scratch"]\n{budgets}{bad}\n[fine_tune]\ndata = "digits"\n')
    result = invoke("experiment", path)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_budgets_name_says_probcovers_purity_when_it_is_not_the_default():
    from pipelines.fine_tune import budget_name
    from transfer.config import FineTuneConfig, make

    assert budget_name(make(FineTuneConfig, data="digits", labels=6, selection="probcover")) == \
        "6 in all (probcover on pixels)"
    assert budget_name(make(FineTuneConfig, data="digits", labels=6, selection="probcover", purity=0.6)) == \
        "6 in all (probcover at purity 0.6 on pixels)"


def test_an_experiment_files_paths_are_relative_to_the_file_and_a_dry_run_writes_nothing(labeled, tmp_path,
                                                                                          monkeypatch):
    """Run from another folder, the file's results, runs and data resolve beside the file: the
    dry run finds the finished cell in the file's table and plans only the other, creating no
    folder anywhere; the real run appends to that table and writes its runs there."""
    import shutil

    from transfer import results

    shutil.copytree(labeled / "labeled", tmp_path / "labeled" / "labeled")
    (tmp_path / "exp").mkdir()
    table = tmp_path / "exp" / "grid.csv"
    results.append_row(table, {"run_id": "done", "command": "fine-tune", "status": "ok", "experiment": "g",
                               "method": "pixels-logreg", "labels_per_class": "2", "seed": 0,
                               "test_accuracy": 0.5})
    path = tmp_path / "exp" / "grid.toml"
    path.write_text('name = "g"\nresults = "grid.csv"\nruns = "../runs"\nseeds = [0, 1]\nlabels_per_class = [2]\n'
                    'methods = ["pixels-logreg"]\n[fine_tune]\ndata = "../labeled/labeled"\nimage_size = 8\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    before = sorted(p for p in tmp_path.rglob("*"))
    result = invoke("experiment", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1 of 2 fine-tunes already in" in result.output and "would run pixels-logreg" in result.output
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing made, here or beside the file
    fresh = tmp_path / "exp" / "fresh.toml"
    fresh.write_text(path.read_text().replace('results = "grid.csv"', 'results = "tables/new.csv"'))
    result = invoke("experiment", fresh, "--dry-run")
    assert result.exit_code == 0 and "0 of 2 fine-tunes already in" in result.output, result.output
    assert not (tmp_path / "exp" / "tables").exists()  # the table's folder is not made by a dry run
    result = invoke("experiment", path)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(table)
    assert len(rows) == 2 and rows.iloc[-1]["seed"] == 1 and (tmp_path / "runs" / "fine-tune" / "g").is_dir()
    assert not any((tmp_path / "elsewhere").iterdir())
