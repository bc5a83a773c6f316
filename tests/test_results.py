"""Results-table tests (no TensorFlow import here: the 8 spawned workers import this module)."""

import multiprocessing

import pandas as pd

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
