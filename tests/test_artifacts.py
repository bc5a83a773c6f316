import json
import numpy as np
import pytest

from transfer import artifacts, models, outputs
from transfer.architectures import preset_blocks
from transfer.errors import TransferError


def _save_run(tmp_path, name="enc"):
    enc = models.build_encoder((8, 8, 1), preset_blocks("small", (4, 8)))
    staging, resumed = artifacts.start_run_dir(tmp_path / name, overwrite=False)
    assert not resumed
    digest = artifacts.save_model(enc, staging / "encoder.keras")
    outputs.write_json(staging / "manifest.json", {
        "format": artifacts.FORMAT, "kind": "encoder", "model_file": "encoder.keras", "model_sha256": digest,
        "preprocessing": {"image_size": 8, "channels": 1},
    })
    return enc, artifacts.finish_run_dir(staging, tmp_path / name)


def test_encoder_round_trip_is_identical(tmp_path):
    enc, run = _save_run(tmp_path)
    loaded, manifest = artifacts.load_model_run(run, "encoder")
    x = np.random.rand(2, 8, 8, 1).astype("float32")
    np.testing.assert_array_equal(enc.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert manifest["preprocessing"]["image_size"] == 8
    assert not (tmp_path / "enc.partial").exists()


def test_existing_run_dir_is_not_overwritten_without_flag(tmp_path):
    _, run = _save_run(tmp_path)
    before = (run / "encoder.keras").read_bytes()
    with pytest.raises(TransferError, match="is complete; pass --overwrite"):
        artifacts.start_run_dir(run, overwrite=False)
    assert (run / "encoder.keras").read_bytes() == before


def test_tampered_model_and_missing_manifest_are_refused(tmp_path):
    _, run = _save_run(tmp_path)
    with open(run / "encoder.keras", "ab") as f:
        f.write(b"x")
    with pytest.raises(TransferError, match="SHA-256 does not match"):
        artifacts.load_model_run(run, "encoder")
    (run / "manifest.json").unlink()
    with pytest.raises(TransferError, match="no manifest.json"):
        artifacts.load_model_run(run, "encoder")
    with pytest.raises(TransferError, match="not found"):
        artifacts.load_model_run(tmp_path / "nope", "encoder")


def test_wrong_kind_is_refused(tmp_path):
    _, run = _save_run(tmp_path)
    with pytest.raises(TransferError, match="not a classifier run directory"):
        artifacts.load_model_run(run, "classifier")


def test_leak_count(tmp_path):
    artifacts.save_pretrain_ids(tmp_path, np.array(["00000000000000ff", "0000000000000001"]))
    assert artifacts.count_leaked(tmp_path, np.array(["00000000000000ff", "0000000000000002"])) == 1
    assert artifacts.count_leaked(tmp_path / "none", np.array(["00"])) is None


def test_write_json_is_valid(tmp_path):
    outputs.write_json(tmp_path / "m.json", {"a": np.float32(1.5), "b": (1, 2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1.5, "b": [1, 2]}


def _manifest_for(run, filename):
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["model_file"] = filename
    if (run / filename).is_file():
        manifest["model_sha256"] = artifacts.sha256_file(run / filename)
    (run / "manifest.json").write_text(json.dumps(manifest))


def test_lambda_layer_model_is_refused_by_safe_mode(tmp_path):
    import keras

    _, run = _save_run(tmp_path)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs), name="encoder")
    model.save(run / "lambda.keras")
    _manifest_for(run, "lambda.keras")
    with pytest.raises(TransferError, match="cannot be loaded safely"):
        artifacts.load_model_run(run, "encoder")


@pytest.mark.parametrize("filename,message", [("encoder.h5", "legacy formats"),
                                               ("../../outside.keras", "must be a file name"),
                                               ("notzip.keras", "not a Keras .keras archive")])
def test_bad_model_files_are_refused(tmp_path, filename, message):
    _, run = _save_run(tmp_path)
    if filename == "notzip.keras":
        (run / filename).write_text("plain text, not a zip archive")
    _manifest_for(run, filename)
    with pytest.raises(TransferError, match=message):
        artifacts.load_model_run(run, "encoder")


def test_an_interrupted_run_of_the_same_configuration_resumes_even_with_overwrite(tmp_path):
    """--overwrite replaces a finished run directory; an interrupted one of the same configuration
    resumes (an experiment's fine-tunes always pass overwrite), another configuration starts empty."""
    out = tmp_path / "run"
    staging, resumed = artifacts.start_run_dir(out, overwrite=True, config={"seed": 1})
    (staging / "backup.txt").write_text("epoch 3")
    staging, resumed = artifacts.start_run_dir(out, overwrite=True, config={"seed": 1})
    assert resumed and (staging / "backup.txt").read_text() == "epoch 3"
    staging, resumed = artifacts.start_run_dir(out, overwrite=True, config={"seed": 2})
    assert not resumed and not (staging / "backup.txt").exists()


def test_an_interrupted_run_is_resumed_only_by_the_code_that_began_it(tmp_path, monkeypatch):
    """config.json carries the SHA-256 of the toolkit's source: the same command under another
    build (a default or a step that changed meaning) starts over instead of continuing."""
    import shutil
    from pathlib import Path

    from pipelines.common import config_dict
    from transfer.config import PretrainConfig

    root = Path(artifacts.__file__).resolve().parent.parent
    copy = tmp_path / "site"
    for package in ("transfer", "pipelines"):
        shutil.copytree(root / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "cli.py", copy / "cli.py")
    fingerprint = artifacts.code_fingerprint.__wrapped__
    assert fingerprint() == artifacts.code_fingerprint()
    monkeypatch.setattr(artifacts, "__file__", str(copy / "transfer" / "artifacts.py"))
    assert fingerprint() == artifacts.code_fingerprint()  # the same source, wherever it is installed
    step = copy / "pipelines" / "fine_tune.py"
    step.write_text(step.read_text() + "\nDEFAULT_CHANGED = True\n")
    other = fingerprint()
    assert other != artifacts.code_fingerprint()

    cfg = PretrainConfig(data="digits", out=str(tmp_path / "run"))
    config = config_dict(cfg)
    assert config["code"] == artifacts.code_fingerprint() and config["seed"] == 0
    staging, _ = artifacts.start_run_dir(cfg.out, overwrite=False, config=config)
    (staging / "backup.txt").write_text("epoch 3")
    assert json.loads((staging / "config.json").read_text())["code"] == config["code"]
    staging, resumed = artifacts.start_run_dir(cfg.out, overwrite=False, config=config_dict(cfg))
    assert resumed and (staging / "backup.txt").is_file()
    monkeypatch.setattr(artifacts, "code_fingerprint", lambda: other)  # the next build runs the same command
    staging, resumed = artifacts.start_run_dir(cfg.out, overwrite=False, config=config_dict(cfg))
    assert not resumed and not (staging / "backup.txt").exists()
    assert json.loads((staging / "config.json").read_text())["code"] == other


def test_a_resumed_runs_row_counts_every_process_that_worked_on_it_and_their_time(tmp_path):
    """A run stopped and resumed, twice over: its row's seconds and cpu_seconds add the processes
    before it, attempts counts them, one killed outright too (its time is lost with it); the
    count is not left in the finished run directory."""
    import signal
    import time

    import pandas as pd

    from pipelines.common import ELAPSED, Run
    from transfer import stopping
    from transfer.config import PretrainConfig

    cfg = PretrainConfig(data="digits", out=str(tmp_path / "run"), results=str(tmp_path / "r.csv"))
    logged = []
    with pytest.raises(stopping.Stopped):
        with Run("pretrain", cfg, cfg.out, logged.append):
            time.sleep(1.0)  # waiting: wall time, not CPU time
            raise stopping.Stopped(signal.SIGTERM)
    first = json.loads((tmp_path / "run.partial" / ELAPSED).read_text())
    assert first["attempts"] == 1 and first["seconds"] >= 1.0 and first["cpu_seconds"] < first["seconds"] - 0.9
    killed = Run("pretrain", cfg, cfg.out, logged.append)  # killed outright: never exits, writes nothing more
    time.sleep(0.5)
    killed._lock.close()  # the lock a killed process leaves is free
    with Run("pretrain", cfg, cfg.out, logged.append) as run:
        time.sleep(0.5)
        enc = models.build_encoder((8, 8, 1), preset_blocks("small", (4, 8)))
        out = run.save(enc, "encoder", 8, 1, arch={}, data={}, metrics={}, objective="autoencoder", start="random",
                       projector=None)
        row = run.record()
    assert sum("resuming the interrupted run" in line for line in logged) == 2
    assert row["attempts"] == 3  # the first, the one killed, this one
    assert first["seconds"] + 0.5 <= row["seconds"] < first["seconds"] + 0.5 + 60  # the killed one's 0.5 s: lost
    assert first["cpu_seconds"] <= row["cpu_seconds"] < row["seconds"]
    assert pd.read_csv(tmp_path / "r.csv").iloc[-1]["attempts"] == 3
    assert not (out / ELAPSED).exists() and (out / "encoder.keras").is_file()
