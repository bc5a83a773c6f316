"""pretrain --start kmeans: k-means filters on whitened patches (transfer.kmeans), layer by layer."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_labeled_dir, stripes

from cli import main
from transfer import kmeans, models
from transfer.architectures import Block


def test_whitening_makes_the_patches_covariance_the_identity():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(5000, 6)) @ rng.normal(size=(6, 6)) + 3.0  # correlated, off-centre
    mean, w = kmeans.whitening(p, floor=0.0)
    assert np.allclose(w, w.T)
    assert np.allclose(np.cov((p - mean) @ w, rowvar=False), np.eye(6), atol=1e-6)
    # the floor damps the directions of small variance instead of blowing them up
    _, damped = kmeans.whitening(p, floor=0.1)
    assert np.linalg.eigvalsh(np.cov((p - mean) @ damped, rowvar=False)).max() < 1.0


def test_patches_lie_inside_the_maps():
    x = np.arange(2 * 5 * 5 * 3, dtype=float).reshape(2, 5, 5, 3)
    got = kmeans.patches(x, 3, 200, np.random.default_rng(0))
    assert got.shape == (200, 27)
    windows = {tuple(x[n, r:r + 3, c:c + 3].ravel()) for n in range(2) for r in range(3) for c in range(3)}
    assert all(tuple(row) in windows for row in got)


def test_filters_tell_apart_the_kinds_of_patch_they_were_fitted_on():
    rng = np.random.default_rng(0)
    vertical = np.tile([0.0, 1.0, 0.0], (3, 1)).ravel()
    horizontal = np.tile([0.0, 1.0, 0.0], (3, 1)).T.ravel()
    kinds = rng.integers(0, 2, 4000)
    p = np.where(kinds[:, None] == 0, vertical, horizontal) + rng.normal(scale=0.1, size=(4000, 9))
    f = kmeans.filters(p, 2, seed=0)
    assert f.shape == (2, 9) and np.allclose(np.linalg.norm(f, axis=1), 1.0)
    best = (p @ f.T).argmax(axis=1)  # each filter answers most to one kind of patch
    assert {(best[kinds == k] == np.bincount(best[kinds == k]).argmax()).mean() > 0.99 for k in (0, 1)} == {True}
    assert np.bincount(best[kinds == 0]).argmax() != np.bincount(best[kinds == 1]).argmax()


def _images(n=200, size=12):
    rng = np.random.default_rng(0)
    return np.stack([stripes("hvd"[i % 3], size, rng) for i in range(n)])[..., None].astype(np.float32) / 255.0


@pytest.mark.parametrize("blocks", [
    [Block(8), Block(16)],  # conv + BatchNorm: the BatchNorm's statistics are set
    [Block(6, 5, padding="valid", pool="avg", batch_norm=False, activation="tanh")],  # LeNet-style: the bias
    [Block(8, pool="none"), Block(16, strides=2, convs=2, pool="none", residual=True)],  # a projected shortcut
], ids=["batchnorm", "no-batchnorm", "residual"])
def test_every_conv_layer_gets_filters_whose_maps_enter_the_activation_standardized(blocks):
    images = _images()
    encoder = models.build_encoder((12, 12, 1), blocks)
    before = {layer.name: layer.get_weights()[0].copy() for layer in encoder.layers
              if isinstance(layer, keras.layers.Conv2D)}
    assert kmeans.start(encoder, images, seed=0) == len(before)
    for layer in encoder.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        assert not np.allclose(layer.get_weights()[0], before[layer.name]), layer.name
        normalizer = kmeans._normalizer(encoder, layer)
        maps = keras.Model(encoder.input, normalizer.output if normalizer else layer.output)(images, training=False)
        maps = np.asarray(maps)
        assert np.allclose(maps.mean(axis=(0, 1, 2)), 0.0, atol=1e-3), layer.name
        assert np.allclose(maps.var(axis=(0, 1, 2)), 1.0, atol=1e-2), layer.name


def test_the_same_seed_gives_the_same_filters():
    images = _images()
    weights = []
    for _ in range(2):
        encoder = models.build_encoder((12, 12, 1), [Block(8), Block(16)])
        kmeans.start(encoder, images, seed=3)
        weights.append([w for layer in encoder.layers for w in layer.get_weights()])
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def _pretrain(tmp_path, *args):
    make_labeled_dir(tmp_path / "d", per_class=12, classes=("h", "v", "d"), size=12)
    return CliRunner().invoke(main, [str(a) for a in [
        "pretrain", "--data", tmp_path / "d", "--out", tmp_path / "enc", "--image-size", "12", "--filters", "4,8",
        "--batch-size", "8", "--no-plots", "--results", tmp_path / "r.csv", *args]], catch_exceptions=False)


@pytest.mark.slow
def test_epochs_0_saves_the_kmeans_encoder_and_its_row(tmp_path):
    result = _pretrain(tmp_path, "--start", "kmeans", "--epochs", "0", "--probe-data", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert "k-means start: the filters of 2 conv layers (4, 8) from patches of 32 images" in result.output
    manifest = json.loads((tmp_path / "enc" / "manifest.json").read_text())
    assert manifest["objective"] == "kmeans" and manifest["start"] == "kmeans" and manifest["projector"] is None
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["objective"] == "kmeans" and row["start"] == "kmeans" and row["epochs"] == 0
    assert row["images_trained"] == 0 and row["train_seconds"] > 0
    # the probe scores the k-means encoder against the random weights it replaced, in the verdict
    assert 0 <= row["probe_knn"] <= 1 and 0 <= row["probe_knn_start"] <= 1
    assert f"k-NN {100 * row['probe_knn']:.1f}% on the probe's" in result.output.strip().splitlines()[-1]
    encoder = keras.saving.load_model(tmp_path / "enc" / "encoder.keras")
    assert np.asarray(encoder.get_layer("block1_bn1").moving_mean).any()  # set from the data, not 0


@pytest.mark.slow
def test_the_objective_trains_from_the_kmeans_filters(tmp_path, monkeypatch):
    """BYOL copies the encoder into its target network when it is built: both must be the k-means
    filters. The run stops there (what it trains from is the claim; a trained two-view objective's
    row records start=kmeans in test_distribute's two-worker and mirrored runs)."""
    from pipelines import pretrain
    from transfer.config import PretrainConfig, make
    from transfer.objectives import byol

    class Built(Exception):
        pass

    seen = {}
    start = kmeans.start

    def recording_start(encoder, *args, **kwargs):
        count = start(encoder, *args, **kwargs)
        seen["kmeans"] = [w.copy() for w in encoder.get_weights()]
        return count

    def recording_build(encoder, *args, **kwargs):
        seen["build"] = [w.copy() for w in encoder.get_weights()]
        raise Built

    monkeypatch.setattr(kmeans, "start", recording_start)
    monkeypatch.setattr(byol, "build", recording_build)
    make_labeled_dir(tmp_path / "d", per_class=12, classes=("h", "v", "d"), size=12)
    cfg = make(PretrainConfig, data=str(tmp_path / "d"), out=str(tmp_path / "enc"), image_size=12, filters=[4, 8],
               batch_size=8, plots=False, results=str(tmp_path / "r.csv"), objective="byol", epochs=1)
    assert cfg.starts_from() == "kmeans"  # BYOL's default start
    with pytest.raises(Built):
        pretrain.run(cfg, log=lambda m: None)
    assert len(seen["kmeans"]) == len(seen["build"]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(seen["kmeans"], seen["build"]))


def test_the_two_view_objectives_start_from_kmeans_filters_by_default():
    from transfer.config import PretrainConfig

    def start(**options):
        return PretrainConfig(data="d", out="o", **options).starts_from()

    assert [start(objective=o) for o in ("contrastive", "vicreg", "byol")] == ["kmeans"] * 3
    assert [start(objective=o) for o in ("autoencoder", "denoising", "masked", "gan")] == ["random"] * 4
    assert start(start="random") == "random" and start(objective="gan", start="kmeans") == "kmeans"
    assert start(init="keras:MobileNetV3Small", weights="none") == "keras:MobileNetV3Small"
    assert start(epochs=0) == "kmeans"  # the default objective's start, kept as it is


@pytest.mark.parametrize("args, message", [
    (["--start", "kmeans", "--init", "keras:MobileNetV3Small", "--weights", "none"], "Use one or the other"),
    (["--start", "random", "--init", "keras:MobileNetV3Small", "--weights", "none"], "Use one or the other"),
    (["--objective", "autoencoder", "--epochs", "0"], "--epochs 0 trains nothing"),
    (["--start", "random", "--epochs", "0"], "--epochs 0 trains nothing"),
    (["--start", "kmeans", "--epochs", "-1"], "epochs must be >= 0"),
    (["--start", "pca"], "Invalid value for '--start'"),
])
def test_bad_start_options_are_refused_before_anything_runs(tmp_path, args, message):
    result = CliRunner().invoke(main, ["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "enc"),
                                       *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "enc").exists()


@pytest.mark.slow
def test_an_experiment_names_kmeans_as_a_method_and_chooses_with_its_encoder(tmp_path):
    """`kmeans` stands where an objective would: its encoder is pretrained by k-means alone, even
    when [pretrain] pins start = "random" and epochs for the objectives, and it both fine-tunes
    and chooses a total budget's images."""
    make_labeled_dir(tmp_path / "d", per_class=12, classes=("h", "v", "d"), size=12)
    (tmp_path / "grid.toml").write_text(
        f'name = "g"\nresults = "{tmp_path / "r.csv"}"\nruns = "{tmp_path / "runs"}"\nseeds = [0]\nbudgets = [6]\n'
        'selections = ["typiclust-kmeans"]\nmethods = ["kmeans-frozen"]\n'
        f'[pretrain]\ndata = "{tmp_path / "d"}"\nimage_size = 12\nfilters = [4, 8]\nstart = "random"\nepochs = 5\n'
        f'[fine_tune]\ndata = "{tmp_path / "d"}"\nimage_size = 12\nepochs = 2\nbatch_size = 8\n')
    result = CliRunner().invoke(main, ["experiment", str(tmp_path / "grid.toml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "k-means start: the filters of 2 conv layers (4, 8)" in result.output
    cost = next(line for line in result.output.splitlines() if line.startswith("pretraining kmeans on "))
    assert cost.endswith("s, reused by every fine-tune of its encoder"), cost  # no images/s: it trains on none
    rows = pd.read_csv(tmp_path / "r.csv")
    pretrained = rows[rows["command"] == "pretrain"].iloc[0]
    assert pretrained["objective"] == "kmeans" and pretrained["start"] == "kmeans" and pretrained["epochs"] == 0
    tuned = rows[rows["command"] == "fine-tune"].iloc[0]
    assert tuned["method"] == "kmeans-frozen" and tuned["selection"] == "typiclust" and tuned["n_train"] == 6
    assert tuned["select_encoder"] == str(tmp_path / "runs" / "pretrain-kmeans")
    assert tuned["encoder"] == str(tmp_path / "runs" / "pretrain-kmeans")
    # run again, the encoder is reused as it is; a [pretrain] section it was not made by is said
    again = CliRunner().invoke(main, ["experiment", str(tmp_path / "grid.toml"), "--dry-run"])
    assert "reusing the kmeans encoder" in again.output and "warning" not in again.output, again.output
    spec = (tmp_path / "grid.toml").read_text()
    (tmp_path / "grid.toml").write_text(spec.replace('epochs = 5\n', 'epochs = 5\nseed = 1\n'))
    changed = CliRunner().invoke(main, ["experiment", str(tmp_path / "grid.toml"), "--dry-run"])
    assert changed.exit_code == 0, changed.output
    assert "warning: it was pretrained with seed=0, not as this file's [pretrain] says" in changed.output


def test_an_experiment_refuses_a_kmeans_method_its_pretrain_section_cannot_make(tmp_path):
    (tmp_path / "grid.toml").write_text(
        'name = "g"\nseeds = [0]\nlabels_per_class = [1]\nmethods = ["kmeans"]\n'
        '[pretrain]\ndata = "digits"\ninit = "keras:MobileNetV3Small"\nweights = "none"\n[fine_tune]\ndata = "digits"\n')
    result = CliRunner().invoke(main, ["experiment", str(tmp_path / "grid.toml")])
    assert result.exit_code == 2 and "Use one or the other" in result.output, result.output
    assert not (tmp_path / "runs").exists()
    from transfer import methods

    with pytest.raises(Exception, match=r"kmeans \(k-means filters alone\)"):
        methods.parse("kmeansx")
    assert methods.parse("kmeans-top1").objective == "kmeans" and not methods.is_baseline("kmeans-finetuned")
