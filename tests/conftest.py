import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a test process per core this process may use (its CPU
    affinity and cgroup quota, which a container's os.cpu_count() does not show), at most 4:
    each holds TensorFlow and trains with every core, and the suite's cost is mostly tracing."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, _cgroup_cores() or cores, 4))


# The modules that take longest, longest first. `--dist loadscope` (pyproject's addopts) hands
# each module whole to one test process, in collection order: a heavy module collected late
# left the other process idle for minutes at the end (767 s of wall for 1,185 s of CPU on 2
# cores). Longest first, the others fill in around them. Per-module wall times from
# `--durations=0`; the order within a module is kept.
HEAVY_FIRST = ("test_distribute.py", "test_backbones.py", "test_cli.py", "test_signals.py", "test_outputs.py",
               "test_docs.py", "test_kmeans.py", "test_objectives.py", "test_budget.py", "test_projector.py",
               "test_end_to_end.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))  # stable: the rest as collected


def _cgroup_cores() -> int | None:
    """The CPU quota of this process's cgroup in whole cores (v2 cpu.max, v1 cfs quota), None if unlimited."""
    from pathlib import Path

    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    return max(1, int(quota) // int(period))


def stripes(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy striped pattern in [0, 255]: 'h' horizontal, 'v' vertical, 'd' diagonal stripes."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.integers(3, 6)
    phase = rng.integers(0, period)
    coord = {"h": yy, "v": xx, "d": xx + yy}[kind]
    img = ((coord + phase) % period < period / 2).astype(np.float32)
    img = 0.8 * img + 0.2 * rng.random((size, size))
    return (img * 255).astype(np.uint8)


def write_image(path, arr: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode="L")
    if mode != "L":
        img = img.convert(mode)
    img.save(path)


def make_labeled_dir(root, per_class=12, classes=("h", "v"), size=16, mode="L", seed=0, ext="png"):
    """root/<class>/<i>.png with class-specific stripe patterns."""
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            write_image(root / c / f"{i}.{ext}", stripes(c, size, rng), mode)
    return root


@pytest.fixture
def labeled_dir(tmp_path):
    return make_labeled_dir(tmp_path / "labeled")


@pytest.fixture
def unlabeled_dir(tmp_path):
    root = tmp_path / "unlabeled"
    rng = np.random.default_rng(1)
    for i in range(24):
        write_image(root / ("nested" if i % 2 else "") / f"u{i}.png", stripes("hvd"[i % 3], 16, rng))
    return root


def cli_command(*args) -> list[str]:
    """The `transfer` command line as a subprocess argument list."""
    return [sys.executable, "-c", "from cli import main; main()", *map(str, args)]


def invoke(*args):
    """The CLI run in-process by click's CliRunner, every argument made a string."""
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def the_next_round_leaves_out(pool, export, folder, labeled: set[str]) -> None:
    """select --exclude EXPORT (a Label Studio export of 4 labeled tasks): 2 new images, none of `labeled`."""
    import pandas as pd

    result = invoke("select", "--data", pool, "--encoder", "pixels", "--image-size", "8", "--labels", "2",
                    "--exclude", export, "--out", folder / "round2.csv", "--results", folder / "r.csv", "--no-sheet")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(folder / "r.csv").iloc[-1]["n_excluded"] == 4
    chosen = {str((folder / p).resolve()) for p in pd.read_csv(folder / "round2.csv")["path"]}
    assert len(chosen) == 2 and not chosen & {str(Path(p).resolve()) for p in labeled}
