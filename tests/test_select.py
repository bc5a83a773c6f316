"""transfer select: which images to label, before any label exists."""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir, the_next_round_leaves_out

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


@pytest.mark.parametrize("strategy", selection.BY_FEATURES)
def test_typiclust_and_kcenter_cover_every_mode_where_random_does_not(strategy):
    x, y = blobs()
    for seed in range(20):  # every seed: typiclust with one k-means run splits a mode on 2 of these 20
        chosen = selection.select(strategy, x, 5, seed=seed)
        assert len(chosen) == 5 and len(set(chosen)) == 5
        assert sorted(set(y[chosen])) == [0, 1, 2, 3, 4], seed
    missed = [len(set(y[selection.select("random", x, 5, seed=s)])) < 5 for s in range(20)]
    assert sum(missed) >= 10  # a blind draw of 5 from 5 modes usually misses one (1 - 5!/5^5 = 96%)


def test_typiclust_takes_the_densest_image_of_a_cluster():
    rng = np.random.default_rng(1)
    core = rng.normal(size=(30, 2)) * 0.1  # a dense core, then a sparse halo
    halo = rng.normal(size=(30, 2)) * 2.0
    x = np.concatenate([core, halo]).astype(np.float32) + 10.0  # away from the origin: normalization keeps shape
    chosen = selection.typiclust(x, 1, np.zeros(0, np.int64), seed=0)
    assert chosen[0] < 30


def test_the_purity_radius_is_the_largest_at_which_alpha_of_the_balls_hold_one_cluster():
    rng = np.random.default_rng(2)
    f = selection.normalized(rng.normal(size=(200, 3)))
    assigned = rng.integers(0, 4, 200)
    d = np.linalg.norm(f[:, None] - f[None], axis=2)
    different = assigned[:, None] != assigned[None]

    def purity(delta):  # the share of balls B(x, delta) = {y: |x - y| < delta} with no other cluster
        return np.mean(~(different & (d < delta)).any(axis=1))

    delta = selection.purity_radius(f, assigned, alpha=0.9)
    assert purity(delta - 1e-4) >= 0.9  # (the margin: distances are float32 in selection)
    assert purity(delta + 1e-4) < 0.9  # any larger radius: below alpha
    assert selection.purity_radius(f, np.zeros(200, int)) == 2.0  # one cluster: every ball is pure


def test_probcover_takes_the_ball_that_covers_most_then_the_most_left_uncovered():
    rng = np.random.default_rng(3)
    dense, sparse = rng.normal(size=(60, 2)) * 0.05, rng.normal(size=(20, 2)) * 0.05  # two tight groups
    x = np.concatenate([dense + [1.0, 0.0], sparse + [0.0, 1.0]]).astype(np.float32)
    chosen = selection.probcover(x, 2, np.zeros(0, np.int64), seed=0)
    f = selection.normalized(x)
    delta = selection.purity_radius(f, selection.clusters(f, 2, 0))
    degrees = (np.linalg.norm(f[:, None] - f[None], axis=2) < delta).sum(axis=1)
    assert chosen[0] < 60 and degrees[chosen[0]] == degrees[:60].max()  # the most covering ball first
    assert chosen[1] >= 60  # then the group it left uncovered, not a second ball in the covered one


def test_probcover_fills_the_budget_past_full_coverage_and_starts_from_what_is_labeled():
    x, y = blobs(n_blobs=3, per_blob=20)
    chosen = selection.select("probcover", x, 12, seed=0)
    assert len(chosen) == 12 and len(set(chosen)) == 12
    three = selection.select("probcover", x, 3, seed=0)
    # one labeled + 2 = the same clusters and radius: the greedy goes on where it left off
    np.testing.assert_array_equal(selection.select("probcover", x, 2, labeled=three[:1], seed=0), three[1:])


def test_probcover_refuses_a_graph_too_large_for_memory_before_building_it(monkeypatch):
    x, _ = blobs(n_blobs=2, per_blob=50)
    monkeypatch.setattr(selection, "MAX_EDGES", 50)
    monkeypatch.setattr(selection, "ball_graph", lambda f, delta: pytest.fail("built the graph"))
    with pytest.raises(TransferError, match="probcover's graph for these 100 images would hold about .* pairs"):
        selection.select("probcover", x, 2, seed=0)
    f = selection.normalized(x)
    delta = selection.purity_radius(f, selection.clusters(f, 2, 0))
    exact = (np.linalg.norm(f[:, None] - f[None], axis=2) < delta).sum()
    assert selection.expected_edges(f, delta) == pytest.approx(exact, rel=1e-3)  # every row sampled: exact


def test_nothing_already_labeled_is_chosen_and_the_next_round_goes_elsewhere():
    x, y = blobs()
    first = selection.select("typiclust", x, 5, seed=0)
    second = selection.select("typiclust", x, 5, labeled=first, seed=0)
    assert not set(first) & set(second) and len(second) == 5
    for strategy in ("kcenter", "probcover"):
        assert not set(first) & set(selection.select(strategy, x, 5, labeled=first, seed=0))
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
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--labels", "10",
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
    again = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--labels", "10",
                   "--exclude", out, "--out", tmp_path / "round2.csv", "--results", results)
    assert again.exit_code == 0, again.output
    second = pd.read_csv(tmp_path / "round2.csv", dtype=str)
    assert not set(second["path"]) & set(chosen["path"]) and len(second) == 10
    assert pd.read_csv(results).iloc[-1]["n_excluded"] == 10


def test_the_rows_cpu_seconds_leave_out_the_time_the_run_waited(tmp_path, monkeypatch):
    """seconds is wall time, counting whatever the run waited for (other jobs on the cores, a
    pause); cpu_seconds is the time the process computed, to compare costs on a shared machine."""
    import pipelines.select

    def slow(*args, **kwargs):
        time.sleep(1.5)  # waits without computing, as a run does behind other jobs or while paused
        return choose(*args, **kwargs)

    choose = pipelines.select.selection.select
    monkeypatch.setattr(pipelines.select.selection, "select", slow)
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--labels", "5",
                    "--out", tmp_path / "to_label.csv", "--results", tmp_path / "results.csv", "--no-sheet")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "results.csv").iloc[-1]
    assert row["seconds"] >= 1.5 and 0 < row["cpu_seconds"] <= row["seconds"] - 1.4


def test_select_on_an_unlabeled_folder_with_a_random_encoder_leaves_labels_to_fill(tmp_path):
    make_labeled_dir(tmp_path / "pool", per_class=8, classes=("h", "v", "d"))
    out = tmp_path / "pick.csv"
    result = invoke("select", "--data", tmp_path / "pool", "--encoder", "random", "--filters", "4,8",
                    "--image-size", "8", "--labels", "4", "--selection", "kcenter", "--out", out,
                    "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    chosen = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(chosen) == 4 and (chosen["label"] == "").all()
    assert all((tmp_path / "pool").as_posix() in p or not p.startswith("/") for p in chosen["path"])


def test_select_bad_input_is_one_error_line(tmp_path):
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--labels", "5",
                    "--exclude", tmp_path / "bad.csv", "--out", tmp_path / "o.csv", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2 and "needs a 'path' column" in result.output
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--labels", "0", "--out", tmp_path / "o.csv")
    assert result.exit_code == 2 and "labels must be >= 1" in result.output
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--out", tmp_path / "o.csv")
    assert result.exit_code == 2 and "select needs how many images to label (--labels N)" in result.output
    result = invoke("select", "--data", "digits", "--encoder", tmp_path / "nope", "--labels", "3",
                    "--out", tmp_path / "o.csv", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2 and "Error:" in result.output
    for args, message in ((["--purity", "0.8"], "--purity is probcover's"),
                          (["--selection", "probcover", "--purity", "0"], "purity must be in (0, 1)")):
        result = invoke("select", "--data", "digits", "--encoder", "pixels", "--labels", "3", *args,
                        "--out", tmp_path / "o.csv", "--results", tmp_path / "r.csv")
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_lower_purity_widens_probcovers_balls_and_the_row_records_it(tmp_path):
    x, _ = blobs()
    f = selection.normalized(x)
    assigned = selection.clusters(f, 5, 0)
    assert selection.purity_radius(f, assigned, 0.5) > selection.purity_radius(f, assigned, 0.95)
    results = tmp_path / "r.csv"
    for purity in ("0.95", "0.6"):
        result = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--labels", "10",
                        "--selection", "probcover", "--purity", purity, "--out", tmp_path / f"{purity}.csv",
                        "--results", results, "--no-sheet")
        assert result.exit_code == 0, result.output
    rows = pd.read_csv(results)
    assert rows["purity"].tolist() == [0.95, 0.6] and (rows["strategy"] == "probcover").all()
    first, second = (set(pd.read_csv(tmp_path / f"{p}.csv")["path"]) for p in ("0.95", "0.6"))
    assert first != second  # the radius changed the choice


def test_the_label_studio_round_trip_select_label_fine_tune_and_the_next_round(tmp_path):
    """select --format label-studio writes the tasks to import (the images served by Label
    Studio's local-files storage, their absolute paths kept) and the labeling config; the three
    exports Label Studio documents (JSON with annotations, JSON-MIN, CSV) read back in
    fine-tune --data, with skipped and unlabeled tasks left out and counted; --exclude takes an
    export; a task whose image is gone is one Error line."""
    import json
    import shutil
    import xml.etree.ElementTree as ET

    pool = make_labeled_dir(tmp_path / "scans", per_class=6, classes=("h", "v"), size=8)
    test = make_labeled_dir(tmp_path / "test", per_class=4, classes=("h", "v"), size=8, seed=1)
    out = tmp_path / "ls" / "tasks.json"
    result = invoke("select", "--data", pool, "--encoder", "pixels", "--image-size", "8", "--labels", "6",
                    "--format", "label-studio", "--classes", "h,v", "--out", out, "--results", tmp_path / "r.csv",
                    "--no-sheet")
    assert result.exit_code == 0, result.output
    # Label Studio serves a file only below a Local files storage's path, never the document root
    # itself (test_labelstudio_live runs a real one): the root is the folder above the images'.
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={tmp_path};" in result.output
    assert f"storage with the absolute path {pool} " in result.output
    tasks = json.loads(out.read_text())
    assert [t["data"]["order"] for t in tasks] == [1, 2, 3, 4, 5, 6]
    for t in tasks:
        assert Path(t["data"]["path"]).is_absolute() and Path(t["data"]["path"]).is_file()
        assert t["data"]["image"] == "/data/local-files/?d=scans/" + Path(t["data"]["path"]).relative_to(pool).as_posix()
    view = ET.fromstring(out.with_suffix(".xml").read_text())
    assert view.find("Image").get("value") == "$image"
    assert [c.get("value") for c in view.find("Choices").findall("Choice")] == ["h", "v"]

    def truth(task):
        return Path(task["data"]["path"]).parent.name

    # Label Studio's JSON export: 4 labeled, one skipped (cancelled), one never opened
    exported = []
    for k, task in enumerate(tasks):
        annotation = {"was_cancelled": k == 4, "result": [] if k == 4 else [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [truth(task)]}}]}
        exported.append({"id": k + 1, "data": task["data"], "annotations": [] if k == 5 else [annotation]})
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "export.json").write_text(json.dumps(exported))
    labeled = sorted(truth(t) for t in tasks[:4])
    assert set(labeled) == {"h", "v"}, labeled  # the pixels' choice covers both classes here
    for k, (name, text) in enumerate([
        ("export.json", None),
        ("export-min.json", json.dumps([{"id": k + 1, "image": t["data"]["image"], "path": t["data"]["path"],
                                         **({"label": truth(t)} if k < 4 else {})} for k, t in enumerate(tasks)])),
        ("export.csv", "id,image,path,label,annotator,annotation_id,lead_time\n" + "".join(
            f"{k + 1},{t['data']['image']},{t['data']['path']},{truth(t) if k < 4 else ''},1,{k},2.0\n"
            for k, t in enumerate(tasks)))]):
        if text is not None:
            (downloads / name).write_text(text)
        result = invoke("fine-tune", "--data", downloads / name, "--test-data", test, "--encoder", "pixels",
                        "--image-size", "8", "--out", tmp_path / f"ft{k}", "--results", tmp_path / "r.csv")
        assert result.exit_code == 0, (name, result.output)
        assert "left out 2 task(s)" in result.output, name
        row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
        assert row["n_train"] == 4 and row["classes_labeled"] == 2, name
    the_next_round_leaves_out(pool, downloads / "export.json", tmp_path, {t["data"]["path"] for t in tasks[:4]})
    gone = Path(tasks[0]["data"]["path"])
    shutil.move(gone, tmp_path / "moved.png")
    result = invoke("fine-tune", "--data", downloads / "export.json", "--encoder", "pixels", "--image-size", "8",
                    "--out", tmp_path / "ft-gone", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2 and result.output.count("Error:") == 1 and str(gone) in result.output
    assert "task image(s) not found" in result.output and not (tmp_path / "ft-gone").exists()
    bad = invoke("select", "--data", "digits", "--encoder", "pixels", "--labels", "2", "--format", "label-studio",
                 "--out", tmp_path / "t.json")
    assert bad.exit_code == 2 and "held in memory" in bad.output


def test_margin_takes_from_each_of_typiclusts_clusters_the_image_the_classifier_is_least_sure_of():
    """Two well-separated clusters; within each, the row whose two best probabilities are
    closest is chosen, never a labeled one, clusters without a label first (typiclust's order)."""
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 0.05, (20, 4)) + [1, 0, 0, 0], rng.normal(0, 0.05, (20, 4)) + [0, 1, 0, 0]])
    p = np.tile([0.9, 0.1], (40, 1))
    p[7], p[25], p[30] = [0.55, 0.45], [0.51, 0.49], [0.6, 0.4]
    assert selection.margins(p)[25] == pytest.approx(0.02)
    chosen = selection.select("margin", f, 2, labeled=[], probabilities=p)
    assert sorted(chosen.tolist()) == [7, 25]
    again = selection.select("margin", f, 2, labeled=[25], probabilities=p)  # clusters without a label first
    assert 25 not in again and 7 in again and len(again) == 2
    with pytest.raises(TransferError, match="needs a classifier's probabilities"):
        selection.select("margin", f, 2)


def test_select_model_chooses_the_next_round_by_the_classifiers_uncertainty(tmp_path):
    """Round 1 fine-tuned, round 2 chosen by its classifier (--selection margin --model RUN): the
    images are new, the row says the strategy; --model without margin, or margin without a
    model, is one Error line before any work."""
    pool = make_labeled_dir(tmp_path / "scans", per_class=8, classes=("h", "v"), size=8)
    first = invoke("select", "--data", pool, "--labeled", "--encoder", "pixels", "--image-size", "8", "--labels", "4",
                   "--out", tmp_path / "round1.csv", "--results", tmp_path / "r.csv", "--no-sheet")
    assert first.exit_code == 0, first.output
    test = make_labeled_dir(tmp_path / "test", per_class=4, classes=("h", "v"), size=8, seed=1)
    ft = invoke("fine-tune", "--data", tmp_path / "round1.csv", "--test-data", test, "--encoder", "pixels",
                "--image-size", "8", "--out", tmp_path / "ft", "--results", tmp_path / "r.csv")
    assert ft.exit_code == 0, ft.output
    second = invoke("select", "--data", pool, "--encoder", "pixels", "--image-size", "8", "--labels", "3",
                    "--selection", "margin", "--model", tmp_path / "ft", "--exclude", tmp_path / "round1.csv",
                    "--out", tmp_path / "round2.csv", "--results", tmp_path / "r.csv", "--no-sheet")
    assert second.exit_code == 0, second.output
    assert "median margin" in second.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
    assert row["strategy"] == "margin" and row["n_excluded"] == 4 and row["n_selected"] == 3
    one = {str((tmp_path / p).resolve()) for p in pd.read_csv(tmp_path / "round1.csv")["path"]}
    two = {str((tmp_path / p).resolve()) for p in pd.read_csv(tmp_path / "round2.csv")["path"]}
    assert len(two) == 3 and not one & two
    for extra, message in ((["--selection", "margin"], "give it --model RUN"),
                           (["--model", tmp_path / "ft"], "--model is for --selection margin")):
        bad = invoke("select", "--data", pool, "--encoder", "pixels", "--labels", "2", "--out", tmp_path / "x.csv",
                     "--results", tmp_path / "r.csv", *extra)
        assert bad.exit_code == 2 and bad.output.count("Error:") == 1 and message in bad.output
        assert not (tmp_path / "x.csv").exists()


def test_the_options_names_before_the_rename_are_still_read_with_a_warning(tmp_path, monkeypatch):
    """select's --budget and --strategy are now --labels and --selection, fine-tune's names for the
    same ideas; the old names still work for one release (command line, --config file, Python
    API), each with one warning that names the new one."""
    import warnings

    import transfer

    monkeypatch.chdir(tmp_path)
    result = invoke("select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--budget", "4",
                    "--strategy", "random", "--out", "a.csv", "--no-sheet", "--results", "r.csv")
    assert result.exit_code == 0, result.output
    assert "warning: --budget is now --labels" in result.stderr and "warning: --strategy is now --selection" in \
        result.stderr
    (tmp_path / "old.toml").write_text('budget = 3\nstrategy = "kcenter"\n')
    result = invoke("select", "--config", "old.toml", "--data", "digits", "--encoder", "pixels", "--image-size", "8",
                    "--out", "b.csv", "--no-sheet", "--results", "r.csv")
    assert result.exit_code == 0 and "warning: --budget is now --labels" in result.stderr, result.output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transfer.select(data="digits", encoder="pixels", image_size=8, budget=2, out="c.csv", sheet=False,
                        results="r.csv", log=lambda m: None)
    assert any("--budget is now --labels" in str(w.message) for w in caught)
    rows = pd.read_csv(tmp_path / "r.csv")
    assert rows["n_selected"].tolist() == [4, 3, 2] and rows["strategy"].tolist() == ["random", "kcenter", "typiclust"]

