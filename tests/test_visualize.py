import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from transfer import models, objectives, stream, training
from transfer import visualize as vis
from transfer.architectures import preset_blocks
from transfer.errors import TransferError


@pytest.fixture(scope="module")
def encoder():
    """A small encoder of random weights (pictures of any weights must depict them)."""
    training.set_seed(0)
    return models.build_encoder((12, 12, 3), preset_blocks("small", (6, 8)))


@pytest.fixture(scope="module")
def trained_encoder():
    """A small encoder briefly pretrained (as an autoencoder) on colored stripes."""
    from conftest import stripes

    training.set_seed(0)
    rng = np.random.default_rng(0)
    gray = np.stack([stripes("hvd"[i % 3], 12, rng) for i in range(96)]).astype("float32") / 255.0
    images = np.stack([gray, gray[::-1], 1 - gray], axis=-1)
    blocks = preset_blocks("small", (6, 8))
    enc = models.build_encoder((12, 12, 3), blocks)
    model = objectives.get("autoencoder").build(enc, blocks, (12, 12, 3), objectives.Options(3e-3, 16))
    batches, steps = stream.ImageSet.of_arrays(images[:80]).train_batches(16)
    model.fit(batches, steps_per_epoch=steps, epochs=8, shuffle=False, verbose=0)  # shuffled by the stream
    return enc


def test_filter_grid_shows_every_kernel_in_color(encoder):
    """Tile o of the grid is kernel o of the first conv layer (its RGB weights), scaled to [0, 1]."""
    grid = vis.filter_grid(encoder)
    assert grid.shape[-1] == 3 and grid.shape[1] == 6 * (3 + 1) + 1  # 6 RGB tiles of 3 px, 1 px gaps
    kernel = np.array(vis.first_conv(encoder).kernel)  # (3, 3, 3, 6)
    for o in range(6):
        k = kernel[:, :, :, o]
        expected = (k - k.min()) / (k.max() - k.min())
        np.testing.assert_allclose(grid[1:4, 1 + 4 * o:4 + 4 * o], expected, atol=1e-6)
    assert np.all(grid[0] == 1.0) and np.all(grid[:, 4] == 1.0)  # white gaps between tiles


@pytest.mark.slow
def test_activation_maximization_raises_the_unit_by_a_large_factor(trained_encoder):
    images, start, end = vis.maximize_activation(trained_encoder, "block2_act1", [0, 3, 5])
    assert images.shape == (3, 12, 12, 3) and images.min() >= 0 and images.max() <= 1
    assert np.all(end > start), (start, end)
    assert np.median(end / np.maximum(start, 1e-3)) > 4, (start, end)  # a unit that noise already drives gains less
    assert images.std(axis=(1, 2, 3)).min() > 0.02  # a pattern, not a flat image


def test_activation_maximization_bad_layer_or_unit(encoder):
    with pytest.raises(TransferError, match="no layer 'nope'"):
        vis.maximize_activation(encoder, "nope", [0])
    with pytest.raises(TransferError, match="out of range"):
        vis.maximize_activation(encoder, "block2_act1", [99])


def test_feature_maps_one_row_per_block(encoder):
    """Row 0 is the image itself; row b, tile c is channel c of block b's output for it (scaled
    to [0, 1], enlarged to the image's size, gray in all three colors)."""
    img = np.random.default_rng(0).random((12, 12, 3)).astype("float32")
    fm = vis.feature_maps(encoder, img)
    assert fm.shape[0] == 3 * (12 + 2)  # the image row and 2 block rows, 1 px frames
    np.testing.assert_allclose(fm[1:13, 1:13], img, atol=1e-6)
    block1 = np.array(keras.Model(encoder.input, encoder.get_layer("block1_out").output)(img[None]))[0]
    for c in range(6):
        m = block1[..., c]
        scaled = (m - m.min()) / max(m.max() - m.min(), 1e-12)
        enlarged = np.kron(scaled, np.ones((12 // m.shape[0], 12 // m.shape[1])))
        tile = fm[15:27, 1 + 13 * c:13 + 13 * c]
        np.testing.assert_allclose(tile, np.repeat(enlarged[..., None], 3, -1), atol=1e-5)


@pytest.mark.slow
def test_visualize_command_writes_pngs_and_self_contained_html(tmp_path):
    from conftest import make_labeled_dir

    make_labeled_dir(tmp_path / "d", per_class=10)
    runner = CliRunner()
    result = runner.invoke(main, ["pretrain", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "enc"),
                                  "--objective", "autoencoder", "--epochs", "2", "--image-size", "8",
                                  "--filters", "4,8", "--results", str(tmp_path / "r.csv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    auto = tmp_path / "enc" / "visualize"
    assert {p.name for p in auto.iterdir()} == {"filters.png", "activations.png", "feature_maps.png", "index.html"}
    result = runner.invoke(main, ["visualize", str(tmp_path / "enc"), "--units", "1,2", "--layer", "block1_act1",
                                  "--out", str(tmp_path / "v")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "v" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "Reconstructions" in page and "<img" in page
    act = np.asarray(Image.open(tmp_path / "v" / "activations.png"))
    assert act.shape[1] >= 768 and act.std() > 5
    bad = runner.invoke(main, ["visualize", str(tmp_path / "enc"), "--layer", "nope"])
    assert bad.exit_code == 2 and "no layer 'nope'" in bad.stderr


def test_compare_plot(tmp_path):
    import pandas as pd

    rows = [{"run_id": f"{m}{b}{s}", "command": "fine-tune", "status": "ok", "data": "d", "method": m,
             "labels_per_class": b, "seed": s, "test_accuracy": 0.5 + 0.1 * s + (0.2 if m == "x" else 0)}
            for m in ("x", "scratch") for b in ("5", "10", "all") for s in (0, 1)]
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    result = CliRunner().invoke(main, ["compare", "--results", str(tmp_path / "r.csv"), "--plot",
                                       str(tmp_path / "p.png")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    img = np.asarray(Image.open(tmp_path / "p.png"))
    assert img.shape[0] > 300 and img.shape[1] > 400 and img.std() > 10
