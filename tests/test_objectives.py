import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import stripes

from transfer import models, objectives, stream, training
from transfer.architectures import preset_blocks
from transfer.errors import TransferError
from transfer.objectives import contrastive, denoising, gan, masked


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return np.stack([stripes("hvd"[i % 3], 8, rng) for i in range(40)])[..., None].astype("float32") / 255.0


def pretrain(name, images, folder, epochs=2, learning_rate=1e-2, seed=0):
    """An objective the keras-io way: build the model, fit it on image batches, report."""
    blocks = preset_blocks("small", (4, 8))
    enc = models.build_encoder((8, 8, 1), blocks)
    objective = objectives.get(name)
    model = objective.build(enc, blocks, (8, 8, 1), objectives.Options(learning_rate, 16, seed))
    train = stream.ImageSet.of_arrays(images[:32])
    batches, steps = train.train_batches(16, seed)
    step, model.traces = model.train_step, 0

    def counted(data):  # run once per trace of the step (its graph runs without Python)
        model.traces += 1
        return step(data)

    model.train_step = counted
    training.fit(model, training.Batches(batches, steps), epochs, training.Keep(history=folder / "h.csv"),
                 callbacks=objective.callbacks(model, folder),
                 validation_data=stream.ImageSet.of_arrays(images[32:]).eval_batches(16) if objective.VALIDATES else None)
    enc.traces = model.traces
    return enc, objective.report(model, train, images[32:])


# vicreg shares contrastive's step, denoising and masked the autoencoder's, and byol's step has its own fast
# test (the target's moving average): they run with the slow tests
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("vicreg", "denoising", "masked", "byol")
                                  else n for n in objectives.OBJECTIVES])
def test_every_objective_trains_the_encoder_in_place(images, name, tmp_path):
    training.set_seed(0)
    fresh = models.build_encoder((8, 8, 1), preset_blocks("small", (4, 8)))  # what the encoder starts as
    training.set_seed(0)
    enc, report = pretrain(name, images, tmp_path)
    after = [np.array(w) for w in enc.trainable_weights]
    assert any(not np.array_equal(a, np.array(b)) for a, b in zip(after, fresh.trainable_weights))
    assert all(np.isfinite(v) for v in report.metrics.values() if isinstance(v, float))
    history = pd.read_csv(tmp_path / "h.csv")
    assert len(history) == 2 and np.isfinite(history["loss"]).all()
    # its optimizer was built before the fit: slots made inside the first trace make TensorFlow
    # trace the step again (a second trace cost 25 s of a backbone's first epoch)
    assert enc.traces == 1
    assert report.preview is not None and report.preview.shape[1:] == (8, 8, 1)


def test_reconstruction_loss_is_the_mean_squared_error_of_the_clean_image(images, tmp_path):
    blocks = preset_blocks("small", (4, 8))
    model = objectives.get("denoising").build(models.build_encoder((8, 8, 1), blocks), blocks, (8, 8, 1),
                                              objectives.Options(1e-3, 16))
    x = tf.constant(images[:16])
    model.corrupt = lambda batch: batch  # a fixed input, so the loss can be recomputed here
    logs = model.test_step(x)
    expected = float(np.mean((np.asarray(model(x)) - images[:16]) ** 2))
    assert float(logs["loss"]) == pytest.approx(expected, rel=1e-5)


def test_corruptions():
    blocks = preset_blocks("small", (4, 8))
    x = tf.ones((4, 16, 16, 1))
    enc = models.build_encoder((16, 16, 1), blocks)
    hidden = masked.build(enc, blocks, (16, 16, 1), objectives.Options(1e-3, 4)).corrupt(x).numpy()
    assert 0.2 < 1 - hidden.mean() < 0.8 and set(np.unique(hidden)) <= {0.0, 1.0}
    cells = hidden[0, ::2, ::2, 0]  # 8x8 grid of 2x2 cells: each cell is all kept or all hidden
    np.testing.assert_array_equal(np.repeat(np.repeat(cells, 2, 0), 2, 1), hidden[0, ..., 0])
    noisy = denoising.build(enc, blocks, (16, 16, 1), objectives.Options(1e-3, 4)).corrupt(0.5 * x).numpy()
    assert noisy.std() == pytest.approx(denoising.NOISE_STD, rel=0.2) and noisy.min() >= 0 and noisy.max() <= 1


def test_nt_xent_matches_its_formula():
    z = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    z1, z2 = z[:4], z[4:]
    loss = float(contrastive.nt_xent(z1, z2, temperature=0.5))
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = u @ u.T / 0.5
    expected = []
    for i in range(8):
        positive = (i + 4) % 8
        others = [j for j in range(8) if j != i]
        expected.append(-sim[i, positive] + np.log(np.exp(sim[i, others]).sum()))
    assert loss == pytest.approx(np.mean(expected), rel=1e-5)
    matched = float(contrastive.nt_xent(z, z + 0.01))
    assert matched < float(contrastive.nt_xent(z, z[::-1].copy())) and matched < np.log(15)


def test_unknown_objective():
    with pytest.raises(TransferError, match="unknown objective"):
        objectives.get("telepathy")


def test_gan_honours_the_learning_rate():
    blocks = preset_blocks("small", (4, 8))
    model = gan.build(models.build_encoder((8, 8, 1), blocks), blocks, (8, 8, 1), objectives.Options(3e-5, 16))
    assert float(model.d_optimizer.learning_rate) == pytest.approx(3e-5)
    assert float(model.g_optimizer.learning_rate) == pytest.approx(3e-5)


@pytest.mark.slow
def test_gan_losses_finite_samples_saved_and_seed_repeatable(images, tmp_path):
    def run(folder):
        training.set_seed(3)
        folder.mkdir()
        enc, report = pretrain("gan", images, folder, epochs=3, learning_rate=1e-3, seed=3)
        return report, [np.array(w) for w in enc.weights]

    first, weights1 = run(tmp_path / "a")
    second, weights2 = run(tmp_path / "b")
    assert np.isfinite(first.metrics["d_loss"]) and np.isfinite(first.metrics["g_loss"])
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]
    history = pd.read_csv(tmp_path / "a" / "h.csv")
    assert {"d_loss", "g_loss"} <= set(history.columns) and len(history) == 3
    assert first.metrics["d_loss"] == pytest.approx(second.metrics["d_loss"], rel=1e-3)
    for w1, w2 in zip(weights1, weights2):  # CPU reductions may differ in the last bits between runs
        np.testing.assert_allclose(w1, w2, rtol=1e-3, atol=1e-4)


GATHER_CHECK = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from transfer import distribute
from transfer.objectives.contrastive import nt_xent

rng = np.random.default_rng(0)
z1, z2 = (tf.constant(rng.normal(size=(12, 8)).astype("float32")) for _ in range(2))
sizes = [int(s) for s in sys.argv[1].split(",")]  # rows on replica 0 and 1 (a last batch may be uneven)

def one_device():
    with tf.GradientTape() as tape:
        tape.watch([z1, z2])
        loss = nt_xent(z1, z2, 0.5)
    return loss, tape.gradient(loss, [z1, z2])

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
counts = tf.constant(sizes)

def step():
    r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
    start, size = tf.reduce_sum(counts[:r]), counts[r]
    a, b = z1[start:start + size], z2[start:start + size]
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = nt_xent(a, b, 0.5)
        # each replica's share of the global mean (equal shares when its batch is half the global one)
        scaled = distribute.scale_loss(loss) * 2 * tf.cast(size, tf.float32) / sum(sizes)
    return scaled, tape.gradient(scaled, [a, b])

results = tf.function(lambda: strategy.run(step))()
local = strategy.experimental_local_results
loss = sum(float(v) for v in local(results[0]))
grads = [np.concatenate([np.asarray(g) for g in local(part)]) for part in results[1]]
ref_loss, ref_grads = one_device()
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": loss, "ref": float(ref_loss),
                  "grad_error": max(float(np.abs(g - np.asarray(r)).max()) for g, r in zip(grads, ref_grads))}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sizes", ["6,6", "7,5"])
def test_contrastive_negatives_are_gathered_across_replicas(sizes):
    """Two replicas, each with its part of a batch, give the loss and gradients of one device on the
    whole batch: every view is contrasted with the views of both replicas."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", GATHER_CHECK, sizes], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["loss"] == pytest.approx(result["ref"], rel=1e-5)
    assert result["grad_error"] < 1e-5


def test_vicreg_loss_matches_its_formula():
    """The authors' and lightly's formulation, written out in numpy."""
    from transfer.objectives import vicreg

    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(12, 5)).astype("float32") * 0.7, rng.normal(size=(12, 5)).astype("float32")

    def var_term(z):
        return np.mean(np.maximum(0.0, 1.0 - np.sqrt(z.var(axis=0, ddof=1) + 1e-4)))

    def cov_term(z):
        c = np.cov(z, rowvar=False)  # (N - 1) normalization
        return (np.sum(c ** 2) - np.sum(np.diag(c) ** 2)) / z.shape[1]

    expected = (25 * np.mean((z1 - z2) ** 2) + 25 * 0.5 * (var_term(z1) + var_term(z2))
                + cov_term(z1) + cov_term(z2))
    assert float(vicreg.vicreg_loss(z1, z2)) == pytest.approx(expected, rel=1e-5)
    # no collapse is rewarded: identical constant embeddings pay the full variance term
    same = np.zeros((12, 5), "float32")
    assert float(vicreg.vicreg_loss(same, same)) == pytest.approx(25 * (1 - np.sqrt(1e-4)), rel=1e-5)


def test_byol_loss_matches_its_formula():
    """BYOL's normalized mean squared error, symmetrized: 0.5 * sum over both directions of
    mean ||p/|p| - z/|z|||^2 (= 2 - 2 cos), written out in numpy."""
    from transfer.objectives import byol

    rng = np.random.default_rng(5)
    p1, z2, p2, z1 = (rng.normal(size=(9, 6)).astype("float32") for _ in range(4))

    def nmse(p, z):
        p, z = p / np.linalg.norm(p, axis=1, keepdims=True), z / np.linalg.norm(z, axis=1, keepdims=True)
        return np.mean(np.sum((p - z) ** 2, axis=1))

    assert float(byol.byol_loss(p1, z2, p2, z1)) == pytest.approx(0.5 * (nmse(p1, z2) + nmse(p2, z1)), rel=1e-5)
    assert float(byol.byol_loss(p1, 3 * p1, p2, 0.5 * p2)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    # the target's momentum: TAU at the start, 1 at the end, on a cosine
    assert float(byol.momentum(0, 100)) == pytest.approx(byol.TAU)
    assert float(byol.momentum(50, 100)) == pytest.approx(1 - (1 - byol.TAU) / 2)
    assert float(byol.momentum(100, 100)) == pytest.approx(1.0)


def test_byol_target_is_the_moving_average_of_the_online_encoder_and_projector():
    """The target starts as the online network (the same projections), then after every step is
    tau * target + (1 - tau) * online, for the encoder's and projector's weights; the predictor
    is online only and learns."""
    from transfer.objectives import byol

    blocks = preset_blocks("small", (4, 8))
    model = byol.build(models.build_encoder((8, 8, 1), blocks), blocks, (8, 8, 1),
                       objectives.Options(1e-2, 16, steps=10))
    x = tf.constant(np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32"))
    followed = model._followed()
    assert len(model.target_weights) == len(followed) == (len(model.encoder.trainable_variables)
                                                          + len(model.projector.trainable_variables))
    np.testing.assert_allclose(np.asarray(model.target_embed(x)), np.asarray(model.embed(x, True)), atol=1e-6)
    model.train_step(x)  # the warm-up's first step has a learning rate of 0
    before = [np.asarray(t) for t in model.target_weights]
    predictor = [np.asarray(v) for v in model.predictor.trainable_variables]
    model.train_step(x)
    tau = float(byol.momentum(2, 10))
    assert 0.99 < tau < 1.0
    online = [np.asarray(v) for v in followed]
    for target, old, new in zip(model.target_weights, before, online):
        np.testing.assert_allclose(np.asarray(target), tau * old + (1 - tau) * new, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(np.asarray(t), n) for t, n in zip(model.target_weights, online))  # it lags
    assert any(not np.array_equal(np.asarray(v), p) for v, p in zip(model.predictor.trainable_variables, predictor))


def test_contrastive_recipe_options_reach_the_model_and_are_checked():
    """--temperature, --projector, --crop, --blur and --jitter build the model they name; the defaults are
    the objective's own; bad values and objectives without views are refused in one line."""
    import keras
    import pytest

    from transfer import models
    from transfer.architectures import preset_blocks
    from transfer.config import PretrainConfig
    from transfer.errors import TransferError
    from transfer.objectives import contrastive, vicreg

    blocks = preset_blocks("small", (4, 8))
    shape = (16, 16, 1)
    default = contrastive.build(models.build_encoder(shape, blocks), blocks, shape, objectives.Options(1e-3, 8))
    assert default.temperature == contrastive.TEMPERATURE
    assert [l.units for l in default.projector.layers if isinstance(l, keras.layers.Dense)] == [128, 64]
    assert default.augment.layers[0].zoom[0] == pytest.approx(-(1 - contrastive.CROP))
    assert [l.factor for l in default.augment.layers if isinstance(l, keras.layers.RandomGaussianBlur)]
    assert [l.factor for l in default.augment.layers if isinstance(l, keras.layers.RandomBrightness)] == [
        (-0.3 * contrastive.JITTER, 0.3 * contrastive.JITTER)]
    tuned = contrastive.build(models.build_encoder(shape, blocks), blocks, shape,
                              objectives.Options(1e-3, 8, temperature=0.1, projector=(32, 16), crop=0.8, blur=0.0,
                                                 jitter=0.5))
    assert tuned.temperature == 0.1
    assert [l.units for l in tuned.projector.layers if isinstance(l, keras.layers.Dense)] == [32, 16]
    assert tuned.augment.layers[0].zoom[0] == pytest.approx(-0.2)  # zoom in to 0.8 of the side at most
    assert not any(isinstance(l, keras.layers.RandomGaussianBlur) for l in tuned.augment.layers)  # --blur 0
    assert [l.factor for l in tuned.augment.layers if isinstance(l, keras.layers.RandomBrightness)] == [(-0.15, 0.15)]
    contrast = [max(l.factor) for l in tuned.augment.layers if isinstance(l, keras.layers.RandomContrast)]
    assert contrast == [pytest.approx(0.3)]
    still = contrastive.build(models.build_encoder(shape, blocks), blocks, shape, objectives.Options(1e-3, 8, jitter=0))
    assert not any(isinstance(l, (keras.layers.RandomBrightness, keras.layers.RandomContrast))
                   for l in still.augment.layers)  # --jitter 0: grey levels as they are
    from transfer.objectives import byol

    tuned_byol = byol.build(models.build_encoder(shape, blocks), blocks, shape,
                            objectives.Options(1e-3, 8, projector=(32, 16), crop=0.8))
    assert [l.units for l in tuned_byol.projector.layers if isinstance(l, keras.layers.Dense)] == [32, 16]
    assert [l.units for l in tuned_byol.predictor.layers if isinstance(l, keras.layers.Dense)] == [
        byol.PREDICTOR_HIDDEN, 16]  # the predictor answers in the projection's width
    assert tuned_byol.augment.layers[0].zoom[0] == pytest.approx(-0.2)
    PretrainConfig(data="digits", out="x", objective="byol", crop=0.8, projector=(32, 16))  # accepted
    expander = vicreg.build(models.build_encoder(shape, blocks), blocks, shape, objectives.Options(1e-3, 8))
    assert [l.units for l in expander.projector.layers if isinstance(l, keras.layers.Dense)] == list(vicreg.EXPANDER)
    for bad, match in (({"temperature": 0}, "temperature must be > 0"), ({"crop": 1.5}, r"crop must be in \(0, 1\]"),
                       ({"blur": -0.1}, r"blur must be in \[0, 1\]"), ({"projector": (0,)}, "projector widths"),
                       ({"jitter": 1.5}, r"jitter must be in \[0, 1\]"),
                       ({"objective": "masked", "jitter": 0.5}, "objective masked has no views"),
                       ({"objective": "autoencoder", "crop": 0.8}, "objective autoencoder has no views"),
                       ({"objective": "vicreg", "temperature": 0.2}, "objective vicreg has no temperature"),
                       ({"objective": "byol", "temperature": 0.2}, "objective byol has no temperature")):
        with pytest.raises(TransferError, match=match):
            PretrainConfig(data="digits", out="x", **bad)
