"""ImageNet backbones of keras.applications as encoders (`--encoder keras:NAME --weights ...`),
offline: every weights file here is saved by the test itself; nothing is downloaded."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import invoke

from transfer import backbones, methods, models
from transfer.errors import TransferError


@pytest.fixture(autouse=True)
def _release_backbones():
    """Each test's backbones (hundreds of layers, their traced functions) are let go after it: kept
    in the session's Keras state, they slowed every later in-process test of the suite."""
    yield
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """MobileNetV3Small without its top, random weights, saved as a weights file."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "mnv3s.weights.h5"
    keras.utils.set_random_seed(0)
    keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return path


def _reference(key, images):
    """What a Keras user feeds the backbone: gray repeated to RGB, resized, 0-255, its preprocess_input."""
    import keras

    family = backbones.BACKBONES[key]
    module = {"mobilenetv3small": "mobilenet_v3", "mobilenetv3large": "mobilenet_v3", "efficientnetb0": "efficientnet",
              "efficientnetv2b0": "efficientnet_v2", "resnet50v2": "resnet_v2", "convnexttiny": "convnext"}[key]
    x = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    size = max(images.shape[1], family.min_size)
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size), interpolation="bilinear"))
    return getattr(keras.applications, module).preprocess_input(x * 255.0)


@pytest.mark.slow
@pytest.mark.parametrize("key", backbones.BACKBONES)
@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_the_encoder_does_what_the_backbones_preprocess_input_does(key, channels):
    """The encoder takes [0, 1] gray or RGB images of any size; inside it they become exactly
    what the family's own preprocess_input makes of 0-255 RGB images at the backbone's size."""
    rng = np.random.default_rng(0)
    images = rng.random((3, 20, 20, channels)).astype("float32")
    encoder = backbones.build(f"keras:{key}", "none", 20, channels)
    inside = encoder.get_layer("block1_backbone")
    import keras

    fed = keras.Model(encoder.input, encoder.get_layer("block0_scale").output)  # what the backbone is fed
    expected = _reference(key, images)
    np.testing.assert_allclose(fed.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(encoder.predict(images, verbose=0), inside.predict(expected, verbose=0),
                               rtol=1e-3, atol=1e-4)


def test_names_roles_and_baselines():
    assert backbones.name_of("keras:MobileNetV3Small") == "mobilenetv3small"
    with pytest.raises(TransferError, match="unknown backbone"):
        backbones.name_of("keras:VGG16")
    assert methods.name("imagenet", "keras:EfficientNetB0", "all", 0) == "keras-efficientnetb0-frozen"
    assert methods.name("imagenet", "keras:EfficientNetB0", "all", 1) == "keras-efficientnetb0-top1"
    assert methods.name(None, "keras:EfficientNetB0", "none", 0, semi=True) == "keras-efficientnetb0-random-finetuned-semi"
    assert methods.parse("keras-resnet50v2-random-top1").settings == {
        "encoder": "keras:resnet50v2", "weights": "none", "freeze": "all", "unfreeze_top": 1}
    # what a Keras user runs first counts as a baseline, never as the user's own pretraining
    assert methods.is_baseline("keras-convnexttiny-finetuned") and not methods.is_baseline("contrastive-finetuned")


def _backbone_weights(model_dir):
    """The backbone inside a saved classifier run."""
    import keras

    classifier = keras.models.load_model(model_dir / "classifier.keras", safe_mode=True, compile=False)
    found = [layer for layer in models.all_layers(classifier) if layer.name == "block1_backbone"]
    assert len(found) == 1
    return found[0]


def _file_backbone(weights_file):
    import keras

    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    backbone.load_weights(weights_file)
    return backbone


def _fine_tune(tmp_path, labeled_dir, weights_file, *extra, out="ft"):
    """A fine-tune from the weights file, under tf.distribute's mirrored strategy (each mode's
    test is its test under a strategy too: one replica on a machine without GPUs)."""
    result = invoke("fine-tune", "--data", labeled_dir, "--encoder", "keras:MobileNetV3Small", "--weights",
                    weights_file, "--image-size", "16", "--labels-per-class", "4", "--fine-tune-epochs", "2",
                    "--epochs", "2", "--strategy", "mirrored", "--out", tmp_path / out, "--results", tmp_path / "r.csv",
                    *extra)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[-1]
    assert row["strategy"] == "mirrored"
    return row


@pytest.mark.slow
def test_frozen_backbone_from_a_weights_file_under_a_head(tmp_path, labeled_dir, weights_file):
    row = _fine_tune(tmp_path, labeled_dir, weights_file, "--freeze", "all", "--unfreeze-top", "0")
    assert row["method"] == "keras-mobilenetv3small-frozen" and row["objective"] == "weights-file"
    assert row["weights"] == weights_file.name and row["arch"] == "mobilenetv3small" and bool(row["encoder_unchanged"])
    saved = _backbone_weights(tmp_path / "ft")
    for mine, theirs in zip(saved.weights, _file_backbone(weights_file).weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))  # loaded from the file, never trained
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    from transfer.artifacts import sha256_file

    assert manifest["encoder"]["sha256"] == sha256_file(weights_file) and manifest["encoder"]["weights"] == weights_file.name
    assert "gray repeated to 3 channels" in manifest["preprocessing"]["in_model"]
    assert "resized up to 32x32" in manifest["preprocessing"]["in_model"]
    # predict feeds the saved classifier the 16x16 gray images; the backbone's handling is inside it
    result = invoke("predict", "--model", tmp_path / "ft", "--data", labeled_dir, "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 24


@pytest.mark.slow
def test_two_phase_fine_tune_trains_the_backbone_with_batchnorm_kept_in_inference(tmp_path, labeled_dir, weights_file):
    row = _fine_tune(tmp_path, labeled_dir, weights_file, "--freeze", "all", "--unfreeze-top", "1",
                     "--fine-tune-learning-rate", "0.01")
    assert row["method"] == "keras-mobilenetv3small-top1"
    import keras

    saved, original = _backbone_weights(tmp_path / "ft"), _file_backbone(weights_file)
    by_name = {v.path: np.asarray(v) for v in original.weights}
    changed = {v.path: not np.array_equal(np.asarray(v), by_name[v.path]) for v in saved.weights}
    batchnorm = [layer for layer in saved.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorm and not any(changed[v.path] for layer in batchnorm for v in layer.weights)
    convs = [layer for layer in saved.layers if isinstance(layer, keras.layers.Conv2D)]
    assert any(changed[layer.kernel.path] for layer in convs)


@pytest.mark.slow
def test_a_backbone_without_weights_trains_from_scratch(tmp_path, labeled_dir):
    row = _fine_tune(tmp_path, labeled_dir, "none")
    assert row["method"] == "keras-mobilenetv3small-random-finetuned" and row["objective"] == "random"
    assert row["readout"] == "avg" and row["readout_choice"] == "default"


@pytest.mark.parametrize("args, message", [
    ([], "needs --weights"),
    (["--weights", "missing.weights.h5"], "no such file"),
    (["--weights", "OTHER"], "not weights of MobileNetV3Small"),
    (["--encoder", "random", "--weights", "none"], "--weights serves a keras:NAME backbone"),
    (["--readout", "projector", "--weights", "none"], "has none"),
])
def test_bad_backbone_inputs_are_one_error_line(tmp_path, labeled_dir, args, message):
    import keras

    other = tmp_path / "other.weights.h5"
    if "OTHER" in args:  # another backbone's weights file (built only where it is given)
        keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(other)
    args = [other if a == "OTHER" else a for a in args]
    result = invoke("fine-tune", "--data", labeled_dir, "--encoder", "keras:MobileNetV3Small", *args,
                    "--out", tmp_path / "ft", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error:") and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ft").exists() and not (tmp_path / "r.csv").exists()


def test_imagenet_weights_offline_is_one_error_that_says_where_the_file_goes(tmp_path, labeled_dir, monkeypatch):
    import keras

    def offline(*args, **kwargs):  # what keras.utils.get_file raises without a network
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "MobileNetV3Small", offline)
    result = invoke("fine-tune", "--data", labeled_dir, "--encoder", "keras:MobileNetV3Small", "--weights",
                    "imagenet", "--out", tmp_path / "ft", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2, result.output
    assert "could not be fetched" in result.output and "~/.keras/models" in result.output
    assert "--weights PATH" in result.output


@pytest.mark.slow
def test_select_and_embed_read_a_backbone(tmp_path, labeled_dir, weights_file):
    """Gray images here; RGB ones (the same folder converted) are read without the repetition."""
    result = invoke("embed", "--encoder", "keras:MobileNetV3Small", "--weights", weights_file, "--data", labeled_dir,
                    "--image-size", "16", "--out", tmp_path / "f.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "f.npy").shape == (24, 576)  # MobileNetV3Small's last map, average pooled
    from conftest import make_labeled_dir

    rgb = make_labeled_dir(tmp_path / "rgb", mode="RGB")
    result = invoke("embed", "--encoder", "keras:MobileNetV3Small", "--weights", weights_file, "--data", rgb,
                    "--image-size", "16", "--out", tmp_path / "rgb.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "rgb.npy").shape == (24, 576)
    result = invoke("select", "--encoder", "keras:MobileNetV3Small", "--weights", "none", "--data", labeled_dir,
                    "--labels", "4", "--selection", "kcenter", "--image-size", "16", "--out", tmp_path / "s.csv",
                    "--results", tmp_path / "r.csv", "--no-sheet")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "s.csv")) == 4
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["encoder"] == "keras:MobileNetV3Small" and row["objective"] == "random" and row["readout"] == "avg"


@pytest.mark.slow
def test_a_fine_tuned_backbone_exports_to_onnx_within_tolerance(tmp_path, labeled_dir, weights_file):
    _fine_tune(tmp_path, labeled_dir, weights_file, "--freeze", "all", "--unfreeze-top", "0")
    result = invoke("export", tmp_path / "ft", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "m.onnx.json").read_text())
    assert record["check"]["max_abs_difference"] <= record["check"]["tolerance"]
    assert "in_model" in record["input"]["preprocessing"]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["contrastive", "masked", "gan"])
def test_pretraining_continues_from_a_backbone_and_is_an_ordinary_encoder(tmp_path, labeled_dir, weights_file,
                                                                           objective):
    """Domain-adaptive pretraining: the backbone's weights from the file, trained further by any
    objective (a two-view one, one with a decoder, the GAN's discriminator), saved as an encoder
    that fine-tune and evaluate open like any other."""
    result = invoke("pretrain", "--data", labeled_dir, "--init", "keras:MobileNetV3Small", "--weights", weights_file,
                    "--objective", objective, "--epochs", "1", "--batch-size", "8", "--image-size", "16",
                    "--no-plots", "--out", tmp_path / "enc", "--results", tmp_path / "pre.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "pre.csv").iloc[0]
    assert row["arch"] == "mobilenetv3small" and row["weights"] == weights_file.name and row["objective"] == objective
    manifest = json.loads((tmp_path / "enc" / "manifest.json").read_text())
    assert manifest["arch"]["init"] == "keras:MobileNetV3Small" and "in_model" in manifest["preprocessing"]
    assert manifest["start"] == "keras:MobileNetV3Small"  # what the objective started from
    import keras

    encoder = keras.models.load_model(tmp_path / "enc" / "encoder.keras", safe_mode=True, compile=False)
    trained = encoder.get_layer("block1_backbone")
    original = {v.path: np.asarray(v) for v in _file_backbone(weights_file).weights}
    assert any(not np.array_equal(np.asarray(v), original[v.path]) for v in trained.trainable_weights)
    if objective != "contrastive":
        return  # opening it is the same for every objective: the contrastive one is fine-tuned and evaluated
    # frozen under a linear head: it opens as a pretrained encoder (training a backbone through
    # fine-tune's phases: test_two_phase_fine_tune_trains_the_backbone_with_batchnorm_kept_in_inference)
    result = invoke("fine-tune", "--data", labeled_dir, "--encoder", tmp_path / "enc", "--labels-per-class", "4",
                    "--freeze", "all", "--unfreeze-top", "0", "--out", tmp_path / "ft", "--results", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "r.csv").iloc[0]["method"] == f"{objective}-frozen"
    # evaluate's random baseline is the backbone with random weights
    result = invoke("evaluate", "--data", labeled_dir, "--encoder", tmp_path / "enc", "--draws", "1",
                    "--readouts", "avg", "--results", tmp_path / "e.csv")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "e.csv")
    assert list(rows["method"]) == ["pixels", "random", "contrastive"] and list(rows["feature_dim"])[1:] == [576, 576]


@pytest.mark.slow
def test_evaluate_scores_a_backbone_beside_pixels_and_its_random_weights(tmp_path, labeled_dir, weights_file):
    result = invoke("evaluate", "--data", labeled_dir, "--encoder", "keras:MobileNetV3Small", "--weights",
                    weights_file, "--image-size", "16", "--draws", "1", "--readouts", "avg",
                    "--results", tmp_path / "e.csv")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "e.csv")
    assert list(rows["method"]) == ["pixels", "random", "weights-file"]
    assert list(rows["feature_dim"]) == [256, 576, 576] and (rows["arch"] == "mobilenetv3small").all()


def test_pretrain_init_needs_a_backbone_and_its_weights(tmp_path, labeled_dir):
    for args, message in [(["--init", "keras:MobileNetV3Small"], "needs --weights"),
                          (["--init", "runs/enc", "--weights", "none"], "--init names a keras.applications backbone"),
                          (["--weights", "none"], "--weights serves a keras:NAME backbone")]:
        result = invoke("pretrain", "--data", labeled_dir, *args, "--out", tmp_path / "enc",
                        "--results", tmp_path / "r.csv")
        assert result.exit_code == 2 and result.output.startswith("Error:") and message in result.output, result.output
        assert not (tmp_path / "enc").exists()


def test_the_visualize_report_reads_a_backbone_inside_its_encoder(tmp_path):
    """Filters of the backbone's first conv (inside the nested model), units of its last map."""
    from transfer import visualize

    encoder = backbones.build("keras:MobileNetV3Small", "none", 16, 1)
    assert visualize.first_conv(encoder).name == "conv" and visualize.default_layer(encoder) == "block1_out"
    images, start, end = visualize.maximize_activation(encoder, "block1_out", [0, 1], steps=2)
    assert images.shape == (2, 16, 16, 1) and visualize.feature_maps(encoder, images[0]).shape[1] > 16


def test_an_experiment_runs_backbone_baselines_beside_scratch_with_their_weights_only(tmp_path, labeled_dir,
                                                                                     weights_file):
    """`weights` in [fine_tune] goes to the keras-... methods alone (scratch brings none), and
    the dry run plans them under their names."""
    (tmp_path / "e.toml").write_text(
        f'name = "bb"\nseeds = [0]\nlabels_per_class = [4]\n'
        f'methods = ["scratch", "keras-mobilenetv3small-frozen", "keras-mobilenetv3small-random-frozen"]\n'
        f'[fine_tune]\ndata = "{labeled_dir}"\nweights = "{weights_file}"\nimage_size = 16\n')
    result = invoke("experiment", tmp_path / "e.toml", "--dry-run")
    assert result.exit_code == 0, result.output
    for name in ("scratch", "keras-mobilenetv3small-frozen", "keras-mobilenetv3small-random-frozen"):
        assert f"would run {name} " in result.output
