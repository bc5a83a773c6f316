"""Results-table tests (no TensorFlow import here: the 8 spawned workers import this module)."""

import multiprocessing

import pandas as pd
import pytest

from transfer import results


def test_results_append_and_read(tmp_path):
    path = tmp_path / "r.csv"
    results.append_row(path, {"run_id": "a", "command": "fine-tune", "test_accuracy": 0.5, "head": (64, 32)})
    results.append_row(path, {"run_id": "b", "command": "fine-tune", "test_accuracy": 0.75})
    df = results.read_results(path)
    assert df["run_id"].tolist() == ["a", "b"]
    assert df["test_accuracy"].tolist() == [0.5, 0.75]
    assert df.loc[0, "head"] == "64,32"
    assert pd.isna(df.loc[1, "test_loss"])  # not applicable -> empty, not a made-up number


def test_results_new_column_keeps_old_rows(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("run_id,test_accuracy\nold,0.1\n")
    results.append_row(path, {"run_id": "new", "test_accuracy": 0.2, "brand_new": 7})
    df = results.read_results(path)
    assert df["run_id"].tolist() == ["old", "new"]
    assert "brand_new" in df and "command" in df
    assert pd.isna(df.loc[0, "brand_new"]) and df.loc[1, "brand_new"] == 7


def _append_many(args):
    path, worker = args
    for i in range(10):
        results.append_row(path, {"run_id": f"{worker}-{i}", "command": "fine-tune", "test_accuracy": i / 10})


@pytest.mark.slow  # 8 processes
def test_a_budget_is_stored_as_columns_and_named_when_read(tmp_path):
    """A total budget is written as its columns (labels, selection, purity, the features that
    chose) with labels_per_class left empty; read back, labels_per_class names it, so budgets
    group and filter as one column."""
    path = tmp_path / "r.csv"
    results.append_row(path, {"run_id": "a", "labels_per_class": 5})
    results.append_row(path, {"run_id": "b", "labels": 20, "selection": "probcover", "purity": 0.6,
                              "select_features": "contrastive", "select_features_readout": "avg"})
    results.append_row(path, {"run_id": "c", "labels": 10, "selection": "random"})
    stored = pd.read_csv(path, dtype=str)
    assert stored["labels_per_class"].tolist()[0] == "5" and stored["labels_per_class"][1:].isna().all()
    assert list(results.read_results(path)["labels_per_class"]) == [
        "5", "20 in all (probcover at purity 0.6 on contrastive (avg))", "10 in all (random)"]


def test_a_table_written_before_budgets_had_columns_is_migrated_as_it_is_read(tmp_path):
    """Rows whose labels_per_class holds a total budget's name (tables of earlier versions)
    read back with the budget's columns filled from it, and the same name; the file is not changed."""
    path = tmp_path / "old.csv"
    names = ["20 in all (probcover at purity 0.6 on contrastive (avg))", "10 in all (random)",
             "4 in all (typiclust on contrastive)", "6 in all (kcenter on autoencoder (multi))", "3", "all"]
    pd.DataFrame({"run_id": list("abcdef"), "labels_per_class": names,
                  "labels": [20, 10, 4, 6, None, None], "selection": ["probcover", "random", "typiclust", "kcenter",
                                                                     None, None]}).to_csv(path, index=False)
    before = path.read_bytes()
    table = results.read_results(path)
    assert list(table["labels_per_class"]) == names and path.read_bytes() == before
    assert table["labels"].tolist()[:4] == [20, 10, 4, 6] and table["labels"][4:].isna().all()
    assert table["selection"].tolist()[:4] == ["probcover", "random", "typiclust", "kcenter"]
    assert table["purity"].tolist()[0] == 0.6 and table["purity"][1:].isna().all()
    assert table["select_features"].tolist()[:4] == ["contrastive", None, "contrastive", "autoencoder"]
    assert table["select_features_readout"].tolist()[:4] == ["avg", None, None, "multi"]


def test_concurrent_appends_lose_no_row(tmp_path):
    path = str(tmp_path / "r.csv")
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        pool.map(_append_many, [(path, w) for w in range(8)])
    df = results.read_results(path)
    assert len(df) == 80 and df["run_id"].nunique() == 80


def test_half_written_last_line_is_skipped_on_read_and_cut_before_append(tmp_path):
    path = tmp_path / "r.csv"
    results.append_row(path, {"run_id": "a", "command": "fine-tune", "test_accuracy": 0.5})
    with open(path, "a") as f:
        f.write("b,2026-11-22,fine-t")  # a crash mid-append
    warned = []
    df = results.read_results(path, warn=warned.append)
    assert df["run_id"].tolist() == ["a"] and "half-written" in warned[0]
    results.append_row(path, {"run_id": "c", "command": "fine-tune", "test_accuracy": 0.7})
    df = results.read_results(path, warn=warned.append)
    assert df["run_id"].tolist() == ["a", "c"] and len(warned) == 1
    assert df["test_accuracy"].tolist() == [0.5, 0.7]


def test_a_file_that_is_not_a_results_table_is_refused_and_left_untouched(tmp_path):
    import pytest

    from transfer.errors import TransferError

    passwd = tmp_path / "passwd"
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534")  # no final newline: 'torn'
    link = tmp_path / "results.csv"
    link.symlink_to(passwd)
    before = passwd.read_bytes()
    for path in (link, passwd):
        with pytest.raises(TransferError, match="not a results table"):
            results.check_table(path)
        with pytest.raises(TransferError, match="not a results table"):
            results.append_row(path, {"run_id": "a", "command": "fine-tune"})
    assert passwd.read_bytes() == before and link.is_symlink()


def test_a_symlinked_table_is_written_through_and_stays_a_link_when_it_grows(tmp_path):
    real = tmp_path / "shared" / "table.csv"
    real.parent.mkdir()
    results.append_row(real, {"run_id": "a", "command": "fine-tune", "test_accuracy": 0.5})
    link = tmp_path / "mine.csv"
    link.symlink_to(real)
    results.append_row(link, {"run_id": "b", "command": "fine-tune", "test_accuracy": 0.6})
    results.append_row(link, {"run_id": "c", "command": "fine-tune", "a_new_column": 3})  # the header widens
    assert link.is_symlink() and link.resolve() == real
    df = results.read_results(real)
    assert df["run_id"].tolist() == ["a", "b", "c"] and df["a_new_column"].tolist()[2] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv", "shared"]


# ------------------------------------------------------------------ properties of the table
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_EXTRA = ["probe_knn", "mask_rate", "brand_new"]
_OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.sets(st.sampled_from(_EXTRA)), st.booleans()),  # new columns?, via the link?
    st.tuples(st.just("torn"), st.integers(1, 40), st.booleans()),  # a process killed mid-append
), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_any_sequence_of_appends_kills_and_growth_leaves_a_readable_table(tmp_path_factory, ops):
    """Appends from any process serialize on the lock, so an interleaving is a sequence of
    appends; a kill mid-append leaves a torn last line. Whatever the sequence: pandas reads
    the table, every completed row is there once, in order, and no other file changed."""
    root = tmp_path_factory.mktemp("prop")
    real = root / "tables" / "t.csv"
    real.parent.mkdir()
    link = root / "link.csv"
    link.symlink_to(real)
    other = root / "tables" / "notes.txt"
    other.write_text("not to be touched\n")
    completed = []
    for k, (kind, arg, via_link) in enumerate(ops):
        path = link if via_link else real
        if kind == "append":
            row = {"run_id": f"r{k}", "command": "fine-tune", "test_accuracy": k / 100, **{c: k for c in arg}}
            results.append_row(path, row)
            completed.append(f"r{k}")
        else:
            if real.exists():  # a kill before the first append leaves nothing
                with open(real, "a") as f:
                    f.write(f"x{k},2026-12-01,fine-tune,ok,,,,,,,,,,,,,,"[:arg])  # never its newline
    assert link.is_symlink() and other.read_text() == "not to be touched\n"
    assert sorted(p.name for p in real.parent.iterdir()) in (["notes.txt", "t.csv", "t.csv.lock"], ["notes.txt"])
    if not completed:
        return
    df = results.read_results(real, warn=lambda m: None)
    assert df["run_id"].tolist() == completed
    for k, (kind, arg, _) in enumerate(ops):
        if kind == "append":
            for c in arg:
                assert df.loc[df["run_id"] == f"r{k}", c].item() == k


_WRITER = """
import sys
from transfer import results
path, tag, columns = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
for i in range(10_000):
    row = {"run_id": f"{tag}-{i}", "command": "fine-tune", "test_accuracy": 0.5}
    if i % 7 == 3:
        row[columns[i % len(columns)]] = i  # the schema grows while others append
    results.append_row(path, row)
    print(f"{tag}-{i}", flush=True)
"""


@pytest.mark.slow
def test_processes_appending_and_killed_at_random_leave_every_completed_row_once(tmp_path):
    real = tmp_path / "t.csv"
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(link if w % 2 else real), f"w{w}",
                               f"c{w}a,c{w}b,shared"], stdout=subprocess.PIPE, text=True, env=env)
             for w in range(4)]
    time.sleep(2.5)
    for p in procs:
        p.send_signal(signal.SIGKILL)  # mid-write, most likely: they do nothing else
    printed = set()
    for p in procs:
        out, _ = p.communicate()
        printed |= set(out.split())
    results.append_row(link, {"run_id": "after", "command": "fine-tune"})  # the next run repairs what a kill left
    printed.add("after")
    df = results.read_results(real, warn=lambda m: None)
    ids = df["run_id"].tolist()
    assert len(ids) == len(set(ids)) and ids[-1] == "after"  # no row twice
    assert printed <= set(ids)  # every completed row
    assert len(set(ids) - printed) <= len(procs)  # at most the one in flight per process (written, not yet told)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "t.csv", "t.csv.lock"]
