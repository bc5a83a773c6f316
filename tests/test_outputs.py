"""Nobody in, nothing lost: every output is checked before any work and replaced atomically,
never through a link and never onto a file the tool did not make; every CSV is read by one
rule (BOM, CRLF, paths relative to the CSV); only regular files are opened (docs/safety.md)."""

import hashlib
import json
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transfer import splits

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "16"]
SELECT = ["select", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--labels", "5"]


def one_error(result, pattern):
    """Exit 2 and one `Error:` line holding `pattern`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output and len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert pattern in lines[0], lines[0]


def png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny fine-tuned classifier (digits, 8x8) and a tiny pretrained encoder."""
    root = tmp_path_factory.mktemp("outputs")
    result = invoke("fine-tune", "--data", "digits", "--encoder", "random", "--freeze", "none", "--labels-per-class",
                    "2", "--epochs", "1", "--out", root / "ft", "--results", root / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    result = invoke("pretrain", "--data", "digits", "--epochs", "1", "--objective", "autoencoder", "--no-plots",
                    "--out", root / "enc", "--results", root / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    return root


def test_select_onto_its_own_results_table_is_refused_before_anything_is_written(tmp_path):
    table = tmp_path / "T.csv"
    assert invoke(*SELECT, "--out", tmp_path / "first.csv", "--results", table, "--no-sheet").exit_code == 0
    before = digest(table)
    one_error(invoke(*SELECT, "--out", table, "--results", table), "are the same file")
    assert digest(table) == before and not (tmp_path / "T.png").exists()


def test_no_output_is_written_through_a_symbolic_link(tmp_path):
    """A link at an output's path is replaced by the new file; the file it pointed to is left as it was."""
    picture, features = png(tmp_path / "theirs" / "photo.png"), tmp_path / "theirs" / "data.npy"
    np.save(features, np.arange(6.0))
    kept = {p: digest(p) for p in (picture, features)}
    (tmp_path / "sel.png").symlink_to(picture)
    (tmp_path / "f.npy").symlink_to(features)
    one_error(invoke(*SELECT, "--out", tmp_path / "sel.csv", "--results", tmp_path / "r.csv"), "already exists")
    result = invoke(*SELECT, "--out", tmp_path / "sel.csv", "--results", tmp_path / "r.csv", "--overwrite")
    assert result.exit_code == 0, result.output
    result = invoke("embed", "--data", "digits", "--encoder", "pixels", "--image-size", "8",
                    "--out", tmp_path / "f.npy", "--overwrite")
    assert result.exit_code == 0, result.output
    assert {p: digest(p) for p in kept} == kept
    assert not (tmp_path / "sel.png").is_symlink() and Image.open(tmp_path / "sel.png").width >= 640
    assert not (tmp_path / "f.npy").is_symlink() and np.load(tmp_path / "f.npy").shape == (1797, 64)


def test_overwrite_replaces_only_what_the_tool_made(classifier, tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "thesis.tex").write_text("years of work")
    notes = tmp_path / "notes.csv"
    notes.write_text("name,comment\nx,keep me\n")
    one_error(invoke("export", classifier / "ft", "--out", mine, "--overwrite"), "is not an export made by transfer")
    one_error(invoke("fine-tune", "--data", "digits", "--encoder", "pixels", "--labels-per-class", "2",
                     "--out", mine, "--overwrite", "--results", tmp_path / "r.csv", *TINY[:2]),
              "is not a run directory")
    one_error(invoke(*SELECT, "--out", notes, "--results", tmp_path / "r.csv"), "already exists")
    one_error(invoke(*SELECT, "--out", notes, "--results", tmp_path / "r.csv", "--overwrite"),
              "is not a CSV table (path,label,...)")
    one_error(invoke("export", classifier / "ft", "--out", classifier, "--overwrite"), "holds it")
    assert (mine / "sub" / "thesis.tex").read_text() == "years of work"
    assert notes.read_text() == "name,comment\nx,keep me\n" and not (tmp_path / "r.csv").exists()
    out = tmp_path / "model"  # an export the tool made is replaced with --overwrite
    assert invoke("export", classifier / "ft", "--out", out).exit_code == 0
    one_error(invoke("export", classifier / "ft", "--out", out), "already exists")
    assert invoke("export", classifier / "ft", "--out", out, "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "model.json").read_text())["model"] == str(out)


def test_a_named_pipe_among_the_images_is_skipped_and_counted_not_waited_on(tmp_path):
    pool = make_labeled_dir(tmp_path / "pool", per_class=4, classes=("h", "v"), size=8)
    os.mkfifo(pool / "h" / "pipe.png")

    def waited(signum, frame):  # opening the pipe for reading would block for ever: fail instead
        raise TimeoutError("select waited on a named pipe")

    before = signal.signal(signal.SIGALRM, waited)
    signal.alarm(60)
    try:
        result = invoke("select", "--data", pool, "--encoder", "pixels", "--image-size", "8", "--labels", "3",
                        "--out", tmp_path / "pick.csv", "--results", tmp_path / "r.csv", "--no-sheet")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file(s); first:" in result.output and "pipe.png: not a regular file" in result.output
    assert pd.read_csv(tmp_path / "r.csv").iloc[-1]["skipped_files"] == 1


def test_a_list_select_writes_is_read_back_from_anywhere(tmp_path, monkeypatch):
    """The documented round trip, from a working folder: the list's paths are relative to the list."""
    make_labeled_dir(tmp_path / "scans", per_class=6, classes=("h", "v"), size=8)
    make_labeled_dir(tmp_path / "test", per_class=4, classes=("h", "v"), size=8, seed=1)
    monkeypatch.chdir(tmp_path)
    result = invoke("select", "--data", "scans", "--labeled", "--encoder", "pixels", "--image-size", "8",
                    "--labels", "4", "--out", "lists/round1.csv", "--results", "r.csv", "--no-sheet")
    assert result.exit_code == 0, result.output
    chosen = pd.read_csv("lists/round1.csv", dtype=str)
    assert chosen["path"].str.startswith("../scans/").all() and chosen["label"].isin(["h", "v"]).all()
    result = invoke("fine-tune", "--data", "lists/round1.csv", "--test-data", "test", "--encoder", "pixels",
                    "--image-size", "8", "--out", "runs/ft", "--results", "r.csv")
    assert result.exit_code == 0, result.output
    labeled = pd.read_csv("runs/ft/labeled.csv", dtype=str)  # read back by select --exclude, relative to itself
    assert sorted(os.path.normpath(Path("runs/ft") / p) for p in labeled["path"]) == sorted(
        os.path.normpath(Path("lists") / p) for p in chosen["path"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = invoke("select", "--data", tmp_path / "scans", "--labeled", "--encoder", "pixels", "--image-size", "8",
                    "--labels", "4", "--exclude", tmp_path / "runs/ft/labeled.csv", "--out", "round2.csv",
                    "--results", tmp_path / "r.csv", "--no-sheet")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "r.csv").query("command == 'select'").iloc[-1]["n_excluded"] == 4


def test_a_spreadsheets_csv_with_a_byte_order_mark_and_crlf_is_read(tmp_path):
    make_labeled_dir(tmp_path / "imgs", per_class=5, classes=("h", "v"), size=8)
    rows = [f"imgs/{c}/{i}.png,{c}" for c in ("h", "v") for i in range(5)]
    manifest = tmp_path / "labels.csv"
    manifest.write_bytes("\ufeffpath,label\r\n".encode() + "\r\n".join(rows).encode() + b"\r\n")
    result = invoke("fine-tune", "--data", manifest, "--encoder", "pixels", "--image-size", "8",
                    "--labels-per-class", "2", "--test-fraction", "0.4", "--out", tmp_path / "ft",
                    "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    exclude = tmp_path / "done.csv"
    exclude.write_bytes("\ufeffpath,label\r\nimgs/h/0.png,h\r\n".encode())
    result = invoke("select", "--data", tmp_path / "imgs", "--encoder", "pixels", "--image-size", "8", "--labels",
                    "2", "--exclude", exclude, "--out", tmp_path / "next.csv", "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "r.csv").iloc[-1]["n_excluded"] == 1


def test_images_listed_twice_never_straddle_the_split_and_the_row_counts_those_dropped(tmp_path):
    make_labeled_dir(tmp_path / "imgs", per_class=10, classes=("h", "v"), size=8)
    manifest = tmp_path / "twice.csv"
    rows = [f"imgs/{c}/{i}.png,{c}" for c in ("h", "v") for i in range(10)]
    manifest.write_text("path,label\n" + "\n".join(rows + rows) + "\n")
    found = splits.open_labeled(str(manifest), None, 0.25, 8, None, log=lambda m: None)
    pool, test = found.source.ids[found.pool], found.source.ids[found.test_index]
    assert not set(pool) & set(test) and found.duplicates_dropped > 0
    result = invoke("fine-tune", "--data", manifest, "--encoder", "pixels", "--image-size", "8",
                    "--test-fraction", "0.25", "--out", tmp_path / "ft", "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
    assert row["duplicates_dropped"] == found.duplicates_dropped and row["n_train"] == len(found.pool)
    assert "the same content is in the test split" in result.output
    one_error(invoke("fine-tune", "--data", manifest, "--test-data", manifest, "--encoder", "pixels", "--image-size",
                     "8", "--out", tmp_path / "ft2", "--results", tmp_path / "r.csv"), "nothing is left to learn from")


@pytest.mark.parametrize("command", ["fine-tune", "pretrain"])
def test_an_unwritable_tensorboard_folder_is_refused_before_training(tmp_path, command):
    (tmp_path / "FILE").write_text("not a folder")
    args = (["--labels-per-class", "2", "--encoder", "random"] if command == "fine-tune"
            else ["--epochs", "1", "--objective", "autoencoder"])
    one_error(invoke(command, "--data", "digits", *args, "--tensorboard", tmp_path / "FILE" / "sub",
                     "--out", tmp_path / "run", "--results", tmp_path / "r.csv", *TINY), "--tensorboard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # no run, no staging, no row


def test_evaluate_says_the_channels_when_they_cannot_be_converted(classifier, tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "bands" / c).mkdir(parents=True)
        for i in range(4):
            np.save(tmp_path / "bands" / c / f"{i}.npy", rng.random((8, 8, 5)).astype(np.float32))
    one_error(invoke("evaluate", "--encoder", classifier / "enc", "--data", tmp_path / "bands",
                     "--results", tmp_path / "r.csv"), "images have [5] channels and cannot all be converted to the 1")


def test_a_selection_rules_setting_can_be_given_in_an_experiment_file(tmp_path):
    def experiment(selections):
        path = tmp_path / "e.toml"
        path.write_text(f'name = "e"\nresults = "{tmp_path / "e.csv"}"\nruns = "{tmp_path / "runs"}"\n'
                        f'seeds = [0]\nbudgets = [10]\nselections = {json.dumps(selections)}\n'
                        'methods = ["pixels-logreg"]\n[fine_tune]\ndata = "digits"\nimage_size = 8\npurity = 0.6\n')
        return invoke("experiment", path, "--dry-run")

    result = experiment(["random", "probcover-pixels"])
    assert result.exit_code == 0, result.output
    assert "would run" in result.output and not (tmp_path / "runs").exists()
    one_error(experiment(["random"]), "name a probcover selection")


def test_visualize_and_compare_replace_only_their_own_kind_of_file(classifier, tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "filters.png").write_text("my notes, named badly")
    one_error(invoke("visualize", classifier / "enc", "--out", tmp_path / "report"), "is not a PNG image")
    assert (tmp_path / "report" / "filters.png").read_text() == "my notes, named badly"
    one_error(invoke("compare", classifier / "r.csv", "--html", classifier / "r.csv"), "would be overwritten")


# --------------------------------------------------------------------------- any sequence of commands

NAMES = ["a.csv", "l.csv", "notes.csv", "f.npy", "l.npy", "mine", "run", "model", "l.png", "a.png"]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path below root: a file's content hash, a link's target, a folder's mark."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                state[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                state[key] = "dir"
            else:
                state[key] = digest(path)
    return state


def _call(kind: str, name: str, overwrite: bool, work: Path, classifier: Path):
    """(arguments, the outputs the call names, relative to work)."""
    flag = ["--overwrite"] if overwrite else []
    stem = name.rsplit(".", 1)[0]
    if kind == "select":
        return ([*SELECT, "--out", work / name, "--results", work / "r.csv", *flag],
                {name, f"{stem}.png", f"{stem}.html", "r.csv", "r.csv.lock"})
    if kind == "embed":
        npy = stem + ".npy"
        return (["embed", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--out", work / npy, *flag],
                {npy, f"{stem}.csv", f"{stem}-duplicates.csv"})
    if kind == "fine-tune":
        return (["fine-tune", "--data", "digits", "--encoder", "pixels", "--image-size", "8", "--labels-per-class",
                 "2", "--out", work / name, "--results", work / "r.csv", *flag],
                {name, f"{name}.partial", f"{name}.lock", "r.csv", "r.csv.lock"})
    return (["export", classifier / "ft", "--out", work / name, *flag], {name, f"{name}.json"})


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["select", "embed", "fine-tune", "export"]), st.sampled_from(NAMES),
                          st.booleans()), min_size=2, max_size=4))
def test_no_sequence_of_commands_changes_a_file_outside_its_named_outputs(classifier, calls):
    with tempfile.TemporaryDirectory() as folder:
        work, outside = Path(folder) / "work", Path(folder) / "outside"
        work.mkdir()
        png(outside / "photo.png")
        np.save(outside / "data.npy", np.arange(3.0))
        (outside / "table.csv").write_text("path,label\nx.png,cat\n")
        (work / "notes.csv").write_text("name,comment\nx,keep me\n")
        (work / "mine").mkdir()
        (work / "mine" / "thesis.tex").write_text("years of work")
        for link, target in (("l.csv", "table.csv"), ("l.png", "photo.png"), ("l.npy", "data.npy")):
            (work / link).symlink_to(outside / target)
        theirs = _snapshot(outside)
        for kind, name, overwrite in calls:
            before = _snapshot(work)
            args, named = _call(kind, name, overwrite, work, classifier)
            result = invoke(*args)
            assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
            after = _snapshot(work)
            changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
            stray = {k for k in changed if k.split(os.sep)[0] not in named}
            assert not stray, f"{kind} --out {name} changed {stray}"
            assert _snapshot(outside) == theirs
