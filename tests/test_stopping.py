"""The stop-signal rules (transfer.stopping), in this process: safe points, critical blocks,
a repeated signal, the grace period; and stale temporary folders of dead processes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from transfer import stopping


def test_a_signal_waits_for_a_safe_point():
    with stopping.handled():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # delivered, noted, not raised
        with pytest.raises(stopping.Stopped) as stopped:
            stopping.check()
    assert stopped.value.name == "SIGTERM" and stopped.value.exit_code == 143


def test_a_critical_block_finishes_before_the_stop():
    done = []
    with stopping.handled(), pytest.raises(stopping.Stopped):
        with stopping.critical():
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)  # even repeated, not inside the block
            time.sleep(0.01)
            done.append("written")
    assert done == ["written"]


def test_a_repeated_signal_stops_at_once():
    with stopping.handled(), pytest.raises(stopping.Stopped) as stopped:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):
            time.sleep(0.01)  # never reaches a check()
    assert stopped.value.exit_code == 130


def test_without_a_safe_point_the_grace_period_ends_it(monkeypatch):
    monkeypatch.setattr(stopping, "GRACE", 0.2)
    start = time.monotonic()
    with stopping.handled(), pytest.raises(stopping.Stopped):
        os.kill(os.getpid(), signal.SIGTERM)
        while time.monotonic() - start < 5:
            time.sleep(0.01)
    assert time.monotonic() - start < 2


def test_a_signal_noted_just_before_an_immediate_block_stops_the_run_as_it_enters():
    """A stop signal that arrives while a worker is still starting (noted, waiting for a safe
    point) and just before it joins its cluster (a wait inside C++, the default action) is not
    lost: the join is never entered, and the handlers are back afterwards."""
    entered = []
    with stopping.handled():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.01)  # delivered and noted
        with pytest.raises(stopping.Stopped) as stopped:
            with stopping.immediate():
                entered.append("the join")
        assert signal.getsignal(signal.SIGHUP) is stopping._handler
    assert entered == [] and stopped.value.name == "SIGHUP"


def test_stale_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f"transfer-decoded-{pid}-abc").mkdir()
    (tmp_path / f"transfer-decoded-{os.getpid()}-mine").mkdir()  # this process's own
    (tmp_path / "transfer-decoded-notapid").mkdir()
    removed = stopping.remove_stale("transfer-decoded-", str(tmp_path))
    assert removed == [str(tmp_path / f"transfer-decoded-{pid}-abc")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"transfer-decoded-{os.getpid()}-mine",
                                                         "transfer-decoded-notapid"]
