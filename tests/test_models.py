import keras
import numpy as np
import pytest

from transfer import models, training
from transfer.architectures import PRESETS, Block, block_shapes, preset_blocks
from transfer.errors import TransferError


@pytest.mark.parametrize(
    "arch,size,expected",
    [("small", 32, (4, 4, 128)), ("vgg", 32, (4, 4, 128)), ("resnet", 32, (8, 8, 128)), ("lenet5", 32, (1, 1, 120))],
)
def test_preset_output_shapes(arch, size, expected):
    enc = models.build_encoder((size, size, 3), preset_blocks(arch), arch)
    assert tuple(enc.output.shape[1:]) == expected
    assert enc.name == "encoder"


def test_valid_padding_and_strides_shape():
    blocks = [Block(8, 3, strides=2, padding="valid", pool="none"), Block(4, 3, padding="valid", pool="avg")]
    enc = models.build_encoder((17, 17, 1), blocks)
    # 17 -> (17-3)//2+1 = 8 -> 8-3+1 = 6 -> pool 3
    assert tuple(enc.output.shape[1:]) == (3, 3, 4)
    assert block_shapes(blocks, 17) == [8, 3]


def test_overrides_and_filters_change_blocks():
    blocks = preset_blocks("small", (8, 16, 32, 64), pool="avg", batch_norm=False, kernel_size=5)
    assert [b.filters for b in blocks] == [8, 16, 32, 64]
    assert all(b.pool == "avg" and not b.batch_norm and b.kernel_size == 5 for b in blocks)
    assert preset_blocks("lenet5")[0] == PRESETS["lenet5"][0]


def test_resnet_has_skip_connections():
    enc = models.build_encoder((16, 16, 1), preset_blocks("resnet"), "resnet")
    adds = [layer for layer in enc.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 3
    assert any(layer.name.endswith("_proj") for layer in enc.layers)


def test_too_small_image_is_refused_with_advice():
    with pytest.raises(TransferError, match="too small for arch lenet5"):
        models.build_encoder((16, 16, 1), preset_blocks("lenet5"), "lenet5")
    with pytest.raises(TransferError, match="unknown arch"):
        preset_blocks("alexnet")
    with pytest.raises(TransferError, match="unknown activation 'sparkle'"):
        models.build_encoder((8, 8, 1), preset_blocks("small", activation="sparkle"))


@pytest.mark.parametrize("arch,size", [("small", 16), ("lenet5", 32), ("resnet", 12)])
def test_autoencoder_reconstructs_input_shape(arch, size):
    blocks = preset_blocks(arch)
    enc = models.build_encoder((size, size, 2), blocks, arch)
    decoder = models.build_decoder(enc, blocks, 2)
    out = decoder.predict(enc.predict(np.random.rand(3, size, size, 2).astype("float32"), verbose=0), verbose=0)
    assert out.shape == (3, size, size, 2)
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("readout,dim", [("avg", 16), ("flatten", 4 * 16), ("multi", 8 + 16), ("stats", 2 * (8 + 16))])
def test_readouts(readout, dim):
    enc = models.build_encoder((8, 8, 1), preset_blocks("small", (8, 16)))
    feats = models.build_features(enc, readout, frozen=True)
    assert feats.output.shape[1] == dim


def test_stats_readout_is_the_mean_and_mean_square_of_each_block_and_orderless():
    enc = models.build_encoder((8, 8, 1), preset_blocks("small", (4, 8)))
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    got = np.array(models.build_features(enc, "stats", frozen=True)(x))
    taps = keras.Model(enc.input, [enc.get_layer("block1_out").output, enc.get_layer("block2_out").output])
    m1, m2 = (np.array(m) for m in taps(x, training=False))
    want = np.concatenate([m1.mean((1, 2)), m2.mean((1, 2)), (m1**2).mean((1, 2)), (m2**2).mean((1, 2))], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(TransferError, match="auto"):
        models.build_features(enc, "auto", frozen=True)


def test_frozen_encoder_weights_and_bn_statistics_unchanged_by_head_training():
    enc = models.build_encoder((8, 8, 1), preset_blocks("small", (4, 8)))
    models.freeze(enc)
    feats = models.build_features(enc, "multi", frozen=True)
    head = models.build_head(feats.output.shape[1], 2, (8,), 0.0)
    clf = models.build_classifier(feats, head)
    clf.compile("adam", "sparse_categorical_crossentropy")
    before = training.snapshot_weights(enc)
    head_before = training.snapshot_weights(head)
    bn_before = np.array(enc.get_layer("block1_bn1").moving_mean)
    x = np.random.rand(32, 8, 8, 1).astype("float32") * 5 + 3  # far from the initial BN statistics
    clf.fit(x, np.arange(32) % 2, epochs=2, verbose=0)
    assert training.weights_identical(enc, before)
    np.testing.assert_array_equal(np.array(enc.get_layer("block1_bn1").moving_mean), bn_before)
    assert not training.weights_identical(head, head_before)  # the head did train


def test_weights_identical_reports_a_violation():
    enc = models.build_encoder((8, 8, 1), preset_blocks("small", (4,)))
    before = training.snapshot_weights(enc)
    enc.get_layer("block1_bn1").moving_mean.assign(np.ones(4, dtype="float32"))
    assert not training.weights_identical(enc, before)


def test_recalibrate_batchnorm_gives_population_statistics_even_for_class_sorted_data():
    enc = models.build_encoder((8, 8, 1), preset_blocks("small", (4,), activation="linear"))
    x = np.concatenate([np.zeros((64, 8, 8, 1)), np.ones((64, 8, 8, 1)) * 4]).astype("float32")  # sorted
    training.recalibrate_batchnorm(enc, x, 16)
    conv_out = keras.Model(enc.input, enc.get_layer("block1_conv1").output).predict(x, verbose=0)
    np.testing.assert_allclose(
        np.array(enc.get_layer("block1_bn1").moving_mean), conv_out.mean(axis=(0, 1, 2)), rtol=0.02, atol=0.02
    )


def test_recalibrate_batchnorm_moves_statistics_toward_data():
    enc = models.build_encoder((8, 8, 1), preset_blocks("small", (4,), activation="linear"))
    x = np.random.rand(64, 8, 8, 1).astype("float32") + 10.0
    training.recalibrate_batchnorm(enc, x, 16)
    conv_out = keras.Model(enc.input, enc.get_layer("block1_conv1").output).predict(x, verbose=0)
    np.testing.assert_allclose(
        np.array(enc.get_layer("block1_bn1").moving_mean), conv_out.mean(axis=(0, 1, 2)), rtol=0.05, atol=0.05
    )


def test_fused_batchnorm_matches_the_builtin_layer():
    """Outputs, gradients (input, gamma, beta) and moving statistics equal Keras's own layer."""
    import tensorflow as tf

    from transfer import layers

    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 3)).astype("float32"))
    builtin, fused = keras.layers.BatchNormalization(momentum=0.8), layers.BatchNormalization(momentum=0.8)
    for layer in (builtin, fused):
        layer.build(x.shape)
        layer.gamma.assign([0.5, 1.0, 2.0])
        layer.beta.assign([0.1, -0.2, 0.3])
    results = []
    for layer in (builtin, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(3, dtype=tf.float32) + y**2)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([np.array(y), *map(np.array, grads), np.array(layer.moving_mean),
                        np.array(layer.moving_variance), np.array(layer(x, training=False))])
    for ours, theirs in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not np.allclose(results[1][4], 0.0)  # the moving mean did move


def test_fused_batchnorm_saves_as_the_builtin_and_is_adopted_after_loading(tmp_path):
    import json
    import zipfile

    from transfer import layers

    enc = models.build_encoder((8, 8, 1), [Block(4, 3)], "custom")
    bns = [layer for layer in enc.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(type(b) is layers.BatchNormalization for b in bns)
    bns[0].moving_mean.assign(np.arange(4, dtype="float32"))
    enc.save(tmp_path / "e.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "e.keras").read("config.json"))
    saved = [(layer["module"], layer["class_name"]) for layer in config["config"]["layers"]]
    assert ("keras.layers", "BatchNormalization") in saved and all(m == "keras.layers" for m, _ in saved)
    loaded = keras.models.load_model(tmp_path / "e.keras", safe_mode=True)  # plain Keras: the built-in
    bn = loaded.get_layer(bns[0].name)
    assert type(bn) is keras.layers.BatchNormalization
    assert layers.adopt(loaded) == 1 and type(bn) is layers.BatchNormalization
    np.testing.assert_array_equal(np.array(bn.moving_mean), np.arange(4))
