"""transfer export: SavedModel, ONNX and LiteRT, each checked against the Keras model."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import invoke

from pipelines import export as export_pipeline
from transfer import export, splits, stream
from transfer.config import ExportConfig
from transfer.errors import TransferError

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "16"]




@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    result = invoke("fine-tune", "--data", "digits", "--encoder", "random", "--freeze", "none", "--labels-per-class",
                    "5", "--epochs", "3", "--out", root / "ft", "--results", root / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    result = invoke("predict", "--model", root / "ft", "--data", "digits", "--out", root / "pred.csv")
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "litert"])
def test_an_export_predicts_what_transfer_predict_does_on_the_digits_test_split(classifier, fmt):
    out = classifier / f"model-{fmt}{export.SUFFIX[fmt]}"
    result = invoke("export", classifier / "ft", "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["check"]["images"] == 64 and record["check"]["on"] == "test images of digits"
    assert 0 <= record["check"]["max_abs_difference"] <= 1e-4
    assert record["input"]["shape"] == [None, 8, 8, 1] and record["class_names"] == [str(d) for d in range(10)]
    found = splits.open_labeled("digits", None, 0.2, 8, 1, log=lambda m: None)
    digits, test = found.test_source, found.test_index
    images = stream.load(digits, test, 8).images
    assert len(images) == 359
    got = export.run_exported(fmt, out, images)
    predicted = pd.read_csv(classifier / "pred.csv").set_index("path")
    expected_probs = predicted.loc[[digits.name(i) for i in test], [f"prob_{d}" for d in range(10)]].to_numpy()
    assert np.mean(got.argmax(axis=1) == expected_probs.argmax(axis=1)) == 1.0  # 100% agreement
    print(f"{fmt}: max probability difference from transfer predict {np.abs(got - expected_probs).max():.2e}")
    assert np.abs(got - expected_probs).max() < 1e-4  # predict writes 6 decimals


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A classifier fine-tuned from a contrastive encoder (the default objective and recipe): the
    encoder's projection head and the probe's standardization are inside the exported graph."""
    root = tmp_path_factory.mktemp("export-pretrained")
    result = invoke("pretrain", "--data", "digits", "--epochs", "1", "--projector", "8,4", "--no-plots",
                    "--out", root / "enc", "--results", root / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    result = invoke("fine-tune", "--data", "digits", "--encoder", root / "enc", "--labels-per-class", "5",
                    "--epochs", "3", "--out", root / "ft", "--results", root / "r.csv", *TINY)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(root / "r.csv").iloc[-1]["readout"] == "projector"
    return root / "ft"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["savedmodel", "litert", "onnx"])
def test_a_pretrained_classifier_exports_with_its_projection_head(pretrained, fmt, tmp_path):
    out = tmp_path / f"model{export.SUFFIX[fmt]}"
    result = invoke("export", pretrained, "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_name(out.name + ".json").read_text())["check"]["max_abs_difference"] <= 1e-4


def test_onnx_keeps_a_heads_fixed_standardization_inside_the_graph(tmp_path):
    """Keras's own ONNX route (tf2onnx's from_function) made the Normalization layer's fixed mean and
    variance graph inputs, so onnxruntime refused to run the model without them."""
    import keras
    import onnxruntime  # the test extra: a missing runtime fails the test, it is not skipped

    from transfer import models

    inputs = keras.Input((6,), name="image")
    features = keras.Model(inputs, keras.layers.Dense(4, name="d")(inputs), name="features")
    rng = np.random.default_rng(0)
    head = models.build_head(4, 3, (5,), 0.0, mean=rng.normal(size=4).astype("float32"),
                             variance=rng.uniform(0.5, 2.0, size=4).astype("float32"))
    model = models.build_classifier(features, head)
    images = rng.random((7, 6)).astype("float32")
    diff = export.export(model, "onnx", tmp_path / "m.onnx", images)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]  # the constants are not inputs
    got = session.run(None, {"image": images})[0]
    np.testing.assert_allclose(got, np.asarray(model(images)), atol=1e-5)
    assert diff <= 1e-5 and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_an_export_that_differs_fails_and_leaves_nothing(classifier, monkeypatch, tmp_path):
    monkeypatch.setattr(export, "run_exported", lambda fmt, path, images: np.zeros((len(images), 10)))
    with pytest.raises(export.ExportMismatch, match="differs from the Keras model"):
        export_pipeline.run(ExportConfig(run_dir=str(classifier / "ft"), format="savedmodel",
                                         out=str(tmp_path / "sm")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_refusals(classifier, tmp_path, monkeypatch):
    out = tmp_path / "sm"
    assert invoke("export", classifier / "ft", "--out", out).exit_code == 0
    again = invoke("export", classifier / "ft", "--out", out)
    assert again.exit_code == 2 and "pass --overwrite" in again.output
    assert invoke("export", tmp_path / "nothing", "--out", tmp_path / "x").exit_code == 2


def test_a_format_whose_runtime_is_missing_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(export.RUNTIMES, "onnx", ("no_such_runtime_module",))
    with pytest.raises(TransferError, match=r'needs no_such_runtime_module: pip install -e "\.\[export\]"'):
        export.check_runtime("onnx")
    result = invoke("export", tmp_path / "any-run", "--format", "onnx")
    assert result.exit_code == 2 and "needs no_such_runtime_module" in result.output  # before reading the run
