"""tf.distribute: two worker processes on 127.0.0.1 pretrain together; lost workers end the job."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import stripes, write_image

from cli import main
from transfer import distribute
from transfer.objectives import OBJECTIVES

PRETRAIN = ["pretrain", "--objective", "autoencoder", "--image-size", "8", "--filters", "4,8",
            "--batch-size", "16", "--no-plots", "--strategy", "multiworker"]


def start_workers(tmp_path, args, count=2, only=None, timeout="60", per_worker=None, script=None):
    """Start the workers (`transfer ARGS`, or `python -c SCRIPT ARGS`); `per_worker(i)` gives
    worker i's own extra arguments."""
    configs = distribute.localhost_cluster(count)
    procs = []
    for i in range(count) if only is None else [only]:
        env = {**os.environ, "TRANSFER_WORKER_TIMEOUT": timeout, "TF_CONFIG": configs[i]}
        log = open(tmp_path / f"worker{i}.log", "w")
        own = per_worker(i) if per_worker else []
        procs.append(subprocess.Popen([sys.executable, "-c", script or "from cli import main; main()",
                                       *map(str, args + own)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      cwd=tmp_path))
    return procs


# Several commands one after another in each worker's process, as a user's script calling the
# CLI would run them: the workers join the cluster once (the join itself is tested above, one
# command per process), then every command builds its strategy and trains on both. Starting two
# processes per command cost 20 s a case; in one pair a case costs the few seconds it trains.
_SEQUENCE = """
import json, sys
from cli import main
for args in json.loads(sys.argv[1]):
    print("transfer-test: " + " ".join(args), flush=True)
    code = main(args, standalone_mode=False)  # the command's row, or an exit code
    if isinstance(code, int) and code:
        sys.exit(code)
"""


def run_in_sequence(folder, commands):
    """Run `commands` (argument lists) one after another on two workers; both must succeed;
    returns the chief's log."""
    args = [json.dumps([[str(a) for a in command] for command in commands])]
    procs = start_workers(folder, args, timeout="120", script=_SEQUENCE)
    codes = [p.wait(timeout=600) for p in procs]
    logs = [(folder / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    return logs[0]


def _images(folder):
    """96 striped 12x12 images of three kinds."""
    rng = np.random.default_rng(0)
    for i in range(96):
        write_image(folder / f"{i}.png", stripes("hvd"[i % 3], 12, rng))
    return folder


@pytest.fixture
def images(tmp_path):
    return _images(tmp_path / "imgs")


@pytest.mark.slow
def test_two_workers_pretrain_together_and_only_the_chief_writes(tmp_path, images):
    labeled = tmp_path / "labeled"
    rng = np.random.default_rng(1)
    for c in "hv":
        for i in range(8):
            write_image(labeled / c / f"{i}.png", stripes(c, 12, rng))
    args = [*PRETRAIN, "--data", images, "--out", tmp_path / "enc", "--epochs", "3",
            "--results", tmp_path / "results.csv", "--probe-data", labeled]
    procs = start_workers(tmp_path, args)
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    rows = pd.read_csv(tmp_path / "results.csv")
    assert len(rows) == 1 and rows.iloc[0]["workers"] == 2 and rows.iloc[0]["replicas"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("enc")) == ["enc"]
    assert "the chief writes" in logs[1]
    # Both workers applied the same all-reduced updates: their logged losses (and online probes:
    # before pretraining, every epoch) agree; the chief states the probe's verdict.
    losses = [[line for line in log.splitlines() if "epoch 3/3" in line][0].split("(")[0] for log in logs]
    assert losses[0] == losses[1] and "probe_knn=" in losses[0]
    starts = [[line for line in log.splitlines() if line.startswith("online probe:")] for log in logs]
    assert starts[0] == starts[1] and len(starts[0]) == 1
    assert 0 <= rows.iloc[0]["probe_knn_start"] <= 1 and "% before pretraining (random weights)" in logs[0]
    ft = CliRunner().invoke(main, ["fine-tune", "--data", str(labeled), "--encoder", str(tmp_path / "enc"),
                                   "--results", str(tmp_path / "results.csv"), "--out", str(tmp_path / "ft")],
                            catch_exceptions=False)
    assert ft.exit_code == 0, ft.output
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
    # Fine-tuning on two workers: test_every_fine_tune_mode_on_two_workers, every mode.


@pytest.mark.slow
def test_workers_started_with_different_out_run_as_the_chiefs_out(tmp_path, images):
    args = [*PRETRAIN, "--data", images, "--epochs", "2", "--results", tmp_path / "results.csv"]
    procs = start_workers(tmp_path, args, per_worker=lambda i: ["--out", tmp_path / f"enc{i}"])
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    assert "differs from the chief's" in logs[1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("enc")) == ["enc0"]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


@pytest.mark.slow
def test_a_stop_signal_ends_a_worker_waiting_for_its_peers_within_seconds(tmp_path, images):
    """SIGHUP (and SIGINT) while the cluster forms; SIGTERM there is held by TensorFlow's own
    preemption notifier until the join's deadline (README, Failure and safety)."""
    import signal

    args = [*PRETRAIN, "--data", images, "--out", tmp_path / "enc", "--epochs", "3",
            "--results", tmp_path / "results.csv"]
    (proc,) = start_workers(tmp_path, args, only=0, timeout="600")
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 180
    while proc.poll() is None and not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.2)  # the join's watchdog starts as the worker begins waiting for worker 1, which never comes
    time.sleep(1)
    assert proc.poll() is None and children.read_text().split()
    sent = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=20) in (-signal.SIGHUP, 128 + signal.SIGHUP) and time.monotonic() - sent < 10
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "enc.partial").exists()


@pytest.mark.slow
def test_a_worker_that_never_joins_ends_the_other_with_a_message(tmp_path, images):
    args = [*PRETRAIN, "--data", images, "--out", tmp_path / "enc", "--epochs", "3",
            "--results", tmp_path / "results.csv"]
    (proc,) = start_workers(tmp_path, args, only=0, timeout="5")
    assert proc.wait(timeout=120) != 0
    assert "not all 2 workers of TF_CONFIG joined within 5s" in (tmp_path / "worker0.log").read_text()
    assert not (tmp_path / "results.csv").exists()
    assert not any(p.name.startswith("enc") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_a_worker_lost_mid_run_ends_the_job_with_a_message(tmp_path, images):
    args = [*PRETRAIN, "--data", images, "--out", tmp_path / "enc", "--epochs", "100000",
            "--results", tmp_path / "results.csv"]
    procs = start_workers(tmp_path, args, timeout="10")
    deadline = time.time() + 120
    while "pretraining autoencoder" not in (tmp_path / "worker1.log").read_text():
        assert time.time() < deadline and procs[1].poll() is None, (tmp_path / "worker1.log").read_text()
        time.sleep(0.5)
    time.sleep(3)
    procs[1].kill()
    try:
        code = procs[0].wait(timeout=120)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("worker 0 did not end:\n" + (tmp_path / "worker0.log").read_text()[-3000:])
    log = (tmp_path / "worker0.log").read_text()
    assert code == 1, log
    # Found by the lost heartbeat (usually) or by a collective's deadline, whichever comes first.
    assert ("Error: distributed training failed: worker 1 stopped responding" in log
            or "Error: distributed training failed: timed out waiting for a worker" in log), log
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "enc").exists()


def test_a_lost_peer_prints_one_line_and_ends_the_process_at_once(tmp_path, images, monkeypatch):
    # TensorFlow's teardown after a lost peer can wait forever for it (garbage collection at
    # exit), so the CLI prints the line and ends the process without that teardown.
    import cli
    import pipelines.pretrain

    def lost(cfg, log):
        raise distribute.WorkerFailed("distributed training failed: worker 1 stopped responding")

    exits = []

    def hard_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(pipelines.pretrain, "run", lost)
    monkeypatch.setattr(cli, "_hard_exit", hard_exit)
    result = CliRunner().invoke(main, ["pretrain", "--data", str(images), "--out", str(tmp_path / "enc")])
    assert exits == [1] and result.exit_code == 1
    assert result.output.strip() == "Error: distributed training failed: worker 1 stopped responding"


HEARTBEAT_LOST = """{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/replica:0/task:0/device:CPU:0}} Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats):
/job:worker/replica:0/task:1
The tasks have crashed. Check the task logs for an earlier error. [Op:CollectiveReduceV2] on /job:worker/replica:0/task:0"""


def test_a_lost_peer_is_named_from_tensorflows_message_and_never_this_worker(monkeypatch):
    # TensorFlow's texts (TF 2.21) name this worker's own device too; only the listed peers are lost.
    monkeypatch.setenv("TF_CONFIG", distribute.localhost_cluster(3)[0])
    assert distribute.lost_peers(HEARTBEAT_LOST) == [("worker", "1")]
    grpc = ("Graph execution error:\n\nDetected at node adam/CollectiveReduceV2 ...\nAdditional GRPC error "
            "information from remote target /job:worker/replica:0/task:2 while calling /tensorflow.WorkerService/RecvBuf:")
    assert distribute.lost_peers(grpc) == [("worker", "2")]
    assert distribute.lost_peers("no task named") == []
    monkeypatch.setenv("TF_CONFIG", distribute.localhost_cluster(3)[1])
    assert distribute.lost_peers(HEARTBEAT_LOST) == []  # a worker never reports itself lost
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", distribute.localhost_cluster(3)[0])
    line = distribute.describe(tf.errors.UnavailableError(None, None, HEARTBEAT_LOST))
    assert line == "worker 1 stopped responding (crashed, killed or unreachable); the run was not saved"


def test_cluster_roles_from_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2", "c:3"]},
                                                "task": {"type": "worker", "index": 2}}))
    assert distribute.cluster() == {"workers": 3, "index": 2, "chief": False}
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.TransferError, match="TF_CONFIG"):
        distribute.cluster()
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.cluster()["chief"] is True


@pytest.mark.slow
def test_mirrored_strategy_runs_in_process_and_is_recorded(tmp_path, images):
    result = CliRunner().invoke(main, [*PRETRAIN[:-1], "mirrored", "--data", str(images), "--epochs", "2",
                                       "--out", str(tmp_path / "enc"), "--results", str(tmp_path / "r.csv")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    import tensorflow as tf

    gpus = len(tf.config.list_logical_devices("GPU"))  # mirrored: one replica per GPU, else the CPU alone
    assert row["strategy"] == "mirrored" and row["replicas"] == max(gpus, 1) and row["images_per_second"] > 0


# Every objective and every fine-tune mode under both strategies (the existing multiworker test
# above covers the autoencoder pretrain and the default fine-tune recipe).
OTHER_OBJECTIVES = [o for o in OBJECTIVES if o != "autoencoder"]
FINE_TUNE_MODES = {"frozen-linear": ["--unfreeze-top", "0"], "hidden-head": ["--unfreeze-top", "0", "--head", "8"],
                   "unfreeze-top2": ["--unfreeze-top", "2"], "freeze-none": ["--freeze", "none"],
                   "scratch": ["--encoder", "random", "--freeze", "none"],
                   # semi-supervised (FixMatch on the labeled folder as the pool): pretrained top 1, and scratch
                   "semi-top1": ["--unfreeze-top", "1", "--unlabeled", "LABELED", "--steps", "2", "--mu", "1"],
                   # distribution alignment (the default: its running mean is one variable over the
                   # replicas), and without it
                   "semi-freeze-none": ["--freeze", "none", "--unlabeled", "LABELED", "--steps", "2", "--mu", "1"],
                   "scratch-semi": ["--encoder", "random", "--freeze", "none", "--unlabeled", "LABELED",
                                    "--steps", "2", "--mu", "1", "--no-align"]}


def mode_args(mode, labeled):
    return [labeled if a == "LABELED" else a for a in FINE_TUNE_MODES[mode]]


@pytest.fixture(scope="module")
def labeled_and_encoder(tmp_path_factory):
    """A labeled folder and a contrastive encoder pretrained on it (in-process, one epoch): its
    projection head is the readout of every pretrained mode (the default objective's path)."""
    root = tmp_path_factory.mktemp("mw")
    rng = np.random.default_rng(1)
    for c in "hvd":
        for i in range(8):
            write_image(root / "labeled" / c / f"{i}.png", stripes(c, 12, rng))
    result = CliRunner().invoke(main, [*PRETRAIN[:-2], "--data", str(root / "labeled"), "--epochs", "1",
                                       "--objective", "contrastive", "--projector", "8,4",
                                       "--out", str(root / "enc"), "--results", str(root / "pre.csv")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "labeled", root / "enc"


@pytest.fixture(scope="module")
def objectives_on_two_workers(tmp_path_factory):
    """Every objective but the autoencoder pretrained on two workers, one after another in one
    pair of processes: (the folder of their encoders `OBJECTIVE/` and rows `r.csv`, the chief's log)."""
    root = tmp_path_factory.mktemp("mw-objectives")
    images = _images(root / "imgs")
    rng = np.random.default_rng(1)
    for c in "hv":
        for i in range(8):
            write_image(root / "labeled" / c / f"{i}.png", stripes(c, 12, rng))
    log = run_in_sequence(root, [[*PRETRAIN, "--objective", objective, "--data", images, "--out", root / objective,
                                  "--epochs", "2", "--results", root / "r.csv"] for objective in OTHER_OBJECTIVES]
                          # --start kmeans: each worker sets the filters itself; the probe (on each worker's
                          # own weights) shows whether they agree
                          + [[*PRETRAIN, "--objective", "contrastive", "--start", "kmeans", "--data", images,
                              "--out", root / "from-kmeans", "--epochs", "2", "--results", root / "kmeans.csv",
                              "--probe-data", root / "labeled"]])
    return root, log


@pytest.mark.slow
@pytest.mark.parametrize("objective", OTHER_OBJECTIVES)
def test_every_objective_pretrains_on_two_workers(objectives_on_two_workers, objective):
    root, log = objectives_on_two_workers
    rows = pd.read_csv(root / "r.csv")
    assert len(rows) == len(OTHER_OBJECTIVES)  # both workers trained each; the chief alone appends
    row = rows.set_index("objective").loc[objective]
    assert row["workers"] == 2 and row["replicas"] == 2 and row["run_dir"] == str(root / objective)
    assert (root / objective / "encoder.keras").is_file() and "Error" not in log


@pytest.mark.slow
def test_the_kmeans_start_gives_both_workers_the_same_filters(objectives_on_two_workers):
    root, _ = objectives_on_two_workers
    logs = [(root / f"worker{i}.log").read_text().split("--start kmeans")[-1] for i in range(2)]
    epochs = [[line.split("(")[0] for line in log.splitlines() if "epoch 2/2" in line] for log in logs]
    assert epochs[0] == epochs[1] and len(epochs[0]) == 1 and "probe_knn=" in epochs[0][0]
    assert all("k-means start: the filters of 2 conv layers (4, 8)" in log for log in logs)
    row = pd.read_csv(root / "kmeans.csv").iloc[0]
    assert row["start"] == "kmeans" and row["workers"] == 2 and (root / "from-kmeans" / "encoder.keras").is_file()


@pytest.mark.slow
def test_the_kmeans_start_and_the_kmeans_encoder_mirrored(tmp_path, images):
    for epochs in ("1", "0"):
        result = CliRunner().invoke(main, [*PRETRAIN[:-1], "mirrored", "--start", "kmeans", "--data", str(images),
                                           "--epochs", epochs, "--out", str(tmp_path / f"enc{epochs}"),
                                           "--results", str(tmp_path / "r.csv")], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "r.csv")
    assert list(rows["objective"]) == ["autoencoder", "kmeans"] and set(rows["strategy"]) == {"mirrored"}
    assert list(rows["start"]) == ["kmeans", "kmeans"]


@pytest.fixture(scope="module")
def modes_on_two_workers(labeled_and_encoder, tmp_path_factory):
    """Every fine-tune mode on two workers, one after another in one pair of processes: the
    folder of their classifiers (`MODE/`) and rows (`r.csv`)."""
    labeled, encoder = labeled_and_encoder
    root = tmp_path_factory.mktemp("mw-modes")
    run_in_sequence(root, [["fine-tune", "--data", labeled, "--encoder", encoder, *mode_args(mode, labeled),
                            "--strategy", "multiworker", "--image-size", "8", "--filters", "4,8", "--epochs", "2",
                            "--fine-tune-epochs", "2", "--labels-per-class", "4", "--out", root / mode,
                            "--results", root / "r.csv"] for mode in FINE_TUNE_MODES])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("mode", FINE_TUNE_MODES)
def test_every_fine_tune_mode_on_two_workers(modes_on_two_workers, mode):
    rows = pd.read_csv(modes_on_two_workers / "r.csv")
    assert len(rows) == len(FINE_TUNE_MODES)  # both workers trained each; the chief alone appends
    row = rows.set_index("run_dir").loc[str(modes_on_two_workers / mode)]
    assert row["workers"] == 2 and row["replicas"] == 2 and row["n_train"] == 12 and row["n_test"] > 0
    assert (modes_on_two_workers / mode / "classifier.keras").is_file()
    assert row["readout"] == ("avg" if "scratch" in mode else "projector")
    if "semi" in mode:
        assert row["method"].endswith("-semi") and row["steps"] == 2 and 0 <= row["mask_rate"] <= 1
        assert bool(row["align"]) == ("--no-align" not in FINE_TUNE_MODES[mode])


@pytest.mark.slow
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_pretrains_mirrored(tmp_path, images, objective):
    result = CliRunner().invoke(main, [*PRETRAIN[:-1], "mirrored", "--objective", objective, "--data", str(images),
                                       "--epochs", "1", "--out", str(tmp_path / "enc"),
                                       "--results", str(tmp_path / "r.csv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["strategy"] == "mirrored" and row["objective"] == objective


@pytest.mark.slow
@pytest.mark.parametrize("mode", FINE_TUNE_MODES)
def test_every_fine_tune_mode_mirrored(tmp_path, labeled_and_encoder, mode):
    labeled, encoder = labeled_and_encoder
    result = CliRunner().invoke(main, [str(a) for a in [
        "fine-tune", "--data", labeled, "--encoder", encoder, *mode_args(mode, labeled), "--strategy", "mirrored",
        "--image-size", "8", "--filters", "4,8", "--epochs", "2", "--fine-tune-epochs", "2", "--labels-per-class", "4",
        "--out", tmp_path / "ft", "--results", tmp_path / "r.csv"]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["strategy"] == "mirrored" and (tmp_path / "ft" / "classifier.keras").is_file()
    assert row["readout"] == ("avg" if "scratch" in mode else "projector")
    assert row["method"].endswith("-semi") == ("semi" in mode)
    if "semi" in mode:
        assert bool(row["align"]) == ("--no-align" not in FINE_TUNE_MODES[mode])


@pytest.mark.slow
def test_two_workers_killed_mid_run_resume_from_the_chiefs_backup(tmp_path, images):
    """Both workers SIGKILLed mid-run; the same two commands continue from the chief's last
    backup (the chief's staging directory, on a file system both reach), each epoch in the
    chief's history once, one row."""
    epochs = 12  # the kill comes after 3; the rerun trains the rest
    args = [*PRETRAIN, "--data", images, "--out", tmp_path / "enc", "--epochs", str(epochs),
            "--results", tmp_path / "r.csv"]
    procs = start_workers(tmp_path, args)
    history = tmp_path / "enc.partial" / "history.csv"
    deadline = time.time() + 180
    while not (history.exists() and history.read_text().count("\n") >= 4):  # header + 3 epochs
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
        time.sleep(0.05)
    for p in procs:
        p.kill()
        p.wait()
    logged = history.read_text().count("\n") - 1
    assert 3 <= logged < epochs and not (tmp_path / "enc").exists()

    procs = start_workers(tmp_path, args)
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    assert "resuming the interrupted run" in logs[0]
    # Both workers restored the chief's last backup (saved after each epoch's history row).
    restored = [int(log.split("continuing after epoch ")[1].split()[0]) for log in logs]
    assert restored[0] == restored[1] and logged - 1 <= restored[0] <= logged, (restored, logged)
    assert pd.read_csv(tmp_path / "enc" / "history.csv")["epoch"].tolist() == list(range(epochs))
    assert len(pd.read_csv(tmp_path / "r.csv")) == 1 and not (tmp_path / "enc.partial").exists()


def test_a_worker_whose_restored_epoch_differs_is_refused(monkeypatch):
    """The check behind a multiworker resume: a worker that restored another epoch than the chief."""
    monkeypatch.setattr(distribute, "is_multiworker", lambda strategy: True)
    monkeypatch.setattr(distribute, "cluster", lambda: {"workers": 2, "index": 1, "chief": False})

    class Store:
        def get_config_key_value(self, key, timeout):
            assert key.startswith("transfer:backup:epoch:")  # the n-th use of the name
            return "5"

    from tensorflow.python.eager import context

    monkeypatch.setattr(context, "context", lambda: Store())
    distribute.same_on_every_worker("backup:epoch", "5")
    with pytest.raises(distribute.TransferError, match="worker 1 disagrees with the chief on backup:epoch: 0 here, 5"):
        distribute.same_on_every_worker("backup:epoch", "0")


def test_localhost_cluster_gives_each_worker_its_task_and_distinct_ports():
    configs = [json.loads(c) for c in distribute.localhost_cluster(3)]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"]["worker"] == workers for c in configs)
