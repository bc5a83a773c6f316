"""Training past one device or one machine, through TensorFlow's own `tf.distribute`.

`--strategy` picks one of:
- `one`: TensorFlow's default strategy (one device);
- `mirrored`: `tf.distribute.MirroredStrategy`, synchronous data parallelism over this
  machine's GPUs (or the devices given);
- `multiworker`: `tf.distribute.MultiWorkerMirroredStrategy`, the same over several
  machines; each process reads its role from the `TF_CONFIG` environment variable
  (`{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}`);
- `auto`: `multiworker` when `TF_CONFIG` lists more than one worker, `mirrored` when
  this machine has more than one GPU, else `one`.

With `multiworker`, each worker streams a disjoint shard of the input (files or
TFRecord shards are divided before decoding), every worker runs the same number
of steps per epoch, and only the chief (worker 0) writes artifacts and result
rows. Collectives time out after `COLLECTIVE_TIMEOUT` seconds, so a worker that
dies ends the others with an error instead of a hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from transfer import internals, stopping, vocabulary
from transfer.errors import TransferError

STRATEGIES = vocabulary.STRATEGIES
PRECISIONS = vocabulary.PRECISIONS  # mixed: Keras's mixed_bfloat16 policy (variables stay float32)
# Seconds a worker waits for all workers to join, and a collective op for its peers, before failing;
# TRANSFER_WORKER_TIMEOUT overrides both (cluster schedulers may start workers minutes apart).
JOIN_TIMEOUT = 600
COLLECTIVE_TIMEOUT = 300
HEARTBEAT_TIMEOUT = 30  # seconds without a peer's heartbeat before it is declared lost


class WorkerFailed(Exception):
    """A distributed run lost a peer or timed out (a run failure, not a bad input)."""


def _peer_errors():
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.InternalError, tf.errors.UnknownError)


def __getattr__(name: str):
    """`distribute.PEER_ERRORS`: the TensorFlow errors of a lost peer, without importing
    TensorFlow when this module loads."""
    if name == "PEER_ERRORS":
        return _peer_errors()
    raise AttributeError(name)


def describe(exc: BaseException) -> str:
    """One line for a failed collective: which peer, and the cause."""
    full, text = str(exc), _first_line(exc)
    if "heartbeat" in full.lower() or "preempted" in full.lower() or isinstance(exc, _peer_errors()[0]):
        who = ", ".join(f"{job} {task}" for job, task in lost_peers(full)) or "a worker"
        return f"{who} stopped responding (crashed, killed or unreachable); the run was not saved"
    if isinstance(exc, _peer_errors()[1]):
        return f"timed out waiting for a worker ({text[:200]})"
    return text[:300]


def lost_peers(message: str) -> list[tuple[str, str]]:
    """(job, task) of the peers a TensorFlow error names as lost: the task list after "The
    following tasks are unhealthy", else the remote end of a failed call; never this task."""
    import re

    task = r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)"
    listed = re.search(r"unhealthy[^\n]*:\n((?:[ \t]*/job:\S+[ \t]*(?:\n|$))+)", message)
    if listed:
        found = re.findall(task, listed.group(1))
    else:
        found = re.findall(r"(?:remote target|reported from) " + task, message)
    job, index, _, _ = _task()
    return sorted(set(found) - {(job, str(index))})


def cluster() -> dict:
    """This process's place in the cluster, from TF_CONFIG: workers, index, chief."""
    job, index, workers, chief_listed = _task()
    return {"workers": max(workers, 1), "index": index,
            "chief": (job == "chief") or (not chief_listed and job == "worker" and index == 0)}


def _task() -> tuple[str, int, int, bool]:
    """From TF_CONFIG: this task's job name and index, the number of workers, and whether
    the cluster lists a chief job (a lone process: worker 0 of 1)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return "worker", 0, 1, False
    try:
        config = json.loads(raw)
        jobs, task = config.get("cluster", {}), config.get("task", {})
        return (task.get("type", "worker"), int(task.get("index", 0)), len(list(jobs.get("worker", []))),
                bool(jobs.get("chief")))
    except (ValueError, TypeError, AttributeError) as exc:
        raise TransferError(f"TF_CONFIG is not valid JSON of the tf.distribute form ({exc})") from None


def localhost_cluster(workers: int) -> list[str]:
    """The TF_CONFIG of each worker of a cluster of `workers` processes on this machine (free
    ports on 127.0.0.1): to try `--strategy multiworker` on one machine, and for tests."""
    import socket

    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(workers)]


def make_strategy(name: str):
    """The `tf.distribute.Strategy` for `--strategy NAME`."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise TransferError(f"strategy must be one of {', '.join(STRATEGIES)}. Received: strategy={name!r}")
    workers = cluster()["workers"]
    if name == "auto":
        if workers > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus] or None)
    if not os.environ.get("TF_CONFIG", "").strip():
        raise TransferError("--strategy multiworker needs TF_CONFIG describing the cluster and this worker's task")
    join, collective = _timeouts()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective)
    message = (f"Error: not all {cluster()['workers']} workers of TF_CONFIG joined within {join}s "
               "(is every worker started, and are the addresses and ports right?)")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(join), message],
                                stdin=subprocess.PIPE)
    try:
        with stopping.immediate():  # the join waits inside C++, where no Python handler runs; nothing is written yet
            _configure_coordination(join)
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (tf.errors.OpError, RuntimeError, ValueError) as exc:
        raise WorkerFailed(f"could not join the cluster in TF_CONFIG: {_first_line(exc)}") from None
    finally:
        watchdog.stdin.close()  # joined (or failed): the watchdog exits
        watchdog.wait()


# Ends this process if the cluster has not formed in time. TensorFlow waits for absent workers
# inside C++, holding the GIL, with no deadline and no reaction to SIGTERM, so the watchdog is a
# separate process. Nothing has been written before the cluster forms, so the kill is safe.
_WATCHDOG = """
import os, select, signal, sys
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], seconds)
if not ready:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


def _timeouts() -> tuple[int, int]:
    raw = os.environ.get("TRANSFER_WORKER_TIMEOUT", "").strip()
    if not raw:
        return JOIN_TIMEOUT, COLLECTIVE_TIMEOUT
    try:
        seconds = int(raw)
        if seconds < 1:
            raise ValueError
    except ValueError:
        raise TransferError(f"TRANSFER_WORKER_TIMEOUT must be a whole number of seconds >= 1. Received: {raw!r}") from None
    return seconds, seconds


def _configure_coordination(join_timeout: int) -> None:
    """Set up TensorFlow's coordination service as MultiWorkerMirroredStrategy would, but with
    deadlines: by default a worker waits forever for a peer that never starts (and ignores
    SIGTERM while it waits)."""
    import tensorflow as tf

    if internals.coordination_configured():
        return
    spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = {job: spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs}
    internals.configure_coordination(jobs, "chief" if "chief" in spec.jobs else "worker", join_timeout * 1000,
                                     min(HEARTBEAT_TIMEOUT, join_timeout) * 1000)


POLL_MS = 1000  # waits on peers return to Python this often, so that a stop signal takes effect
_uses: dict[str, int] = {}


def _key(name: str) -> str:
    """A coordination-service key for the n-th use of `name` in this process (every worker
    makes the same calls in the same order, so the n-th uses meet)."""
    _uses[name] = _uses.get(name, 0) + 1
    return f"transfer:{name}:{_uses[name]}"


def _wait_for_key(key: str, what: str) -> str:
    """The value a peer put under `key`, polled every POLL_MS (a wait inside TensorFlow
    never returns to Python, so SIGTERM would be ignored for as long as it lasts)."""
    import time

    import tensorflow as tf

    deadline = time.monotonic() + _timeouts()[0]
    while True:
        try:
            return internals.get(key, POLL_MS)
        except tf.errors.DeadlineExceededError:
            if time.monotonic() > deadline:
                raise tf.errors.DeadlineExceededError(None, None, f"timed out waiting for {what}") from None


def barrier(name: str) -> None:
    """Wait until every worker of a multiworker run gets here (no-op otherwise)."""
    if not is_multiworker(current()):
        return
    key, info = _key(f"barrier:{name}"), cluster()
    internals.put(f"{key}:{info['index']}", "1")
    for index in range(info["workers"]):
        _wait_for_key(f"{key}:{index}", f"worker {index} at {name}")


def chief_value(name: str, value: str) -> str:
    """The chief's `value` of `name`, on every worker (the chief's own, on the chief)."""
    if not is_multiworker(current()):
        return value
    key = _key(name)
    if cluster()["chief"]:
        internals.put(key, value)
        return value
    return _wait_for_key(key, f"the chief's {name}")


def same_on_every_worker(name: str, value: str) -> None:
    """Refuse a multiworker run whose workers disagree on `value` (the chief's is the reference)."""
    chief = chief_value(name, value)
    if chief != value:
        raise TransferError(f"worker {cluster()['index']} disagrees with the chief on {name}: {value} here, "
                            f"{chief} on the chief")


def workers(strategy) -> int:
    """Machines taking part in the run."""
    return cluster()["workers"] if is_multiworker(strategy) else 1


def is_multiworker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def current():
    import tensorflow as tf

    return tf.distribute.get_strategy()


def local_batch(x, y=None):
    """A batch like those `fit` will see, as local tensors: from arrays, or this worker's
    first batch of a (distributed) dataset."""
    import numpy as np
    import tensorflow as tf

    if isinstance(x, np.ndarray):
        return (x[:2], y[:2]) if y is not None else x[:2]
    strategy = tf.distribute.get_strategy()
    first = next(iter(x))
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], first)


def replicas() -> int:
    """Replicas in sync under the current strategy (1 outside any)."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss(loss):
    """Divide a per-replica mean loss by the replica count: gradients are summed across replicas,
    so the update equals that of one device on the whole global batch. For custom train steps."""
    n = replicas()
    return loss / n if n > 1 else loss


def gradient_step(optimizer, variables, compute):
    """One optimizer step of a custom `train_step`: `compute()` runs under a gradient tape and
    returns the per-replica mean loss (or a tuple whose first item it is); the loss is scaled
    for the replicas inside the tape (`scale_loss`) and `optimizer` applies its gradients to
    `variables`. Returns what `compute` returned."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = compute()
        scaled = scale_loss(out[0] if isinstance(out, tuple) else out)  # inside the tape, or the gradient is None
    optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
    return out


def batches(make, global_batch: int, count: int):
    """Batches for `fit` under the current strategy.

    Args:
        make: make(batch_size, shard) -> a `tf.data.Dataset` of batches; `shard` is
            (num_shards, index) or None.
        global_batch: examples per step, over all replicas.
        count: examples in one epoch, over all workers.

    One worker gets `make(global_batch, None)`. Several workers each stream their own
    shard with the per-replica batch size, the same number of steps per epoch
    (`count // global_batch`; a shard's leftover images wait for a later epoch).
    """
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not is_multiworker(strategy):
        return make(global_batch, None)
    steps = max(1, count // global_batch)

    def per_worker(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        ds = make(per_replica, (context.num_input_pipelines, context.input_pipeline_id))
        return ds.repeat().take(steps * local_replicas)

    return strategy.distribute_datasets_from_function(per_worker)


def prepare_model(model, sample_batch) -> None:
    """Work around Keras 3 under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    `fit` reduces a first distributed batch across workers eagerly to build the
    model, and reduces scalar logs with `axis=0`; both fail with several
    workers. The model is built here from a local batch instead, and its step
    logs are given a leading axis of 1 so that their cross-worker mean works.
    No-op outside multiworker.
    """
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not is_multiworker(strategy):
        return
    with strategy.scope():
        internals.build_from_local_batch(model, sample_batch)
    for step in ("train_step", "test_step"):
        original = getattr(model, step)
        setattr(model, step, _with_leading_axis(original))


def _with_leading_axis(step):
    import tensorflow as tf

    def wrapped(data):
        return {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    return wrapped


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
