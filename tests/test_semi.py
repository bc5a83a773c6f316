"""Augmentation in fine-tuning and semi-supervised fine-tuning (FixMatch, --unlabeled)."""

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir

from transfer import augment, methods, models, semi, stream
from transfer.objectives import contrastive

TINY = ["--image-size", "8", "--filters", "4,8", "--batch-size", "4"]




@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("semi")
    make_labeled_dir(root / "labeled", per_class=10, classes=("h", "v", "d"))
    make_labeled_dir(root / "pool", per_class=12, classes=("h", "v", "d"), seed=7)  # other images
    return root


def _row(results, out):
    df = pd.read_csv(results)
    return df[df["run_dir"] == str(out)].iloc[0]


def _augmentation_layers(model):
    """The layers of `model` whose class is one the augmentation policies are built from
    (every policy, FixMatch's strong view, the contrastive views)."""
    used = {type(layer) for policy in augment.POLICIES if augment.build(policy) is not None
            for layer in augment.build(policy).layers}
    used |= {type(layer) for layer in augment.strong("label-preserving").layers}
    used |= {type(layer) for layer in contrastive.build_augment(1).layers}
    return [layer for layer in models.all_layers(model) if type(layer) in used]


def test_fixmatch_loss_matches_its_formula():
    """loss = CE(labeled) + lambda * mean(mask * CE(strong, argmax weak)), mask = max p_weak >= threshold."""
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    identity = keras.Sequential([keras.layers.Identity()])
    shift = keras.Sequential([keras.layers.Rescaling(2.0)])  # a deterministic "strong" view
    model = semi.FixMatch(classifier, identity, shift, threshold=0.4, weight=0.7)
    rng = np.random.default_rng(0)
    x_l, y_l = rng.normal(size=(5, 4)).astype("float32"), np.array([0, 1, 2, 1, 0])
    x_u = 3 * rng.normal(size=(9, 4)).astype("float32")
    p_l, p_u, p_s = (np.array(classifier(v)) for v in (x_l, x_u, 2 * x_u))
    model.threshold = float(np.median(p_u.max(axis=1)))  # some pseudo-labels kept, some dropped
    total, labeled, unlabeled, mask, _ = model.losses_of(x_l, y_l, x_u)

    ce_l = -np.log(p_l[np.arange(5), y_l]).mean()
    m = p_u.max(axis=1) >= model.threshold
    ce_u = (m * -np.log(p_s[np.arange(9), p_u.argmax(axis=1)])).mean()
    assert 0 < m.sum() < 9, "the test needs some pseudo-labels kept and some dropped"
    np.testing.assert_allclose(np.array(mask), m.astype("float32"))
    np.testing.assert_allclose(float(labeled), ce_l, rtol=1e-4)
    np.testing.assert_allclose(float(unlabeled), ce_u, rtol=1e-4)
    np.testing.assert_allclose(float(total), ce_l + 0.7 * ce_u, rtol=1e-4)


def test_distribution_alignment_matches_its_formula_and_never_pseudo_labels_an_unlabeled_class():
    """With `align`, the running mean p_model <- m p_model + (1 - m) mean(p_weak) is updated
    first, then p = p_weak * target / p_model, renormalized; confidence and pseudo-label
    come from p. The target is uniform over the labeled classes (here 0 and 1, not 2)."""
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    identity = keras.Sequential([keras.layers.Identity()])
    shift = keras.Sequential([keras.layers.Rescaling(2.0)])
    model = semi.FixMatch(classifier, identity, shift, threshold=0.5, align=[1.0, 1.0, 0.0], align_momentum=0.6)
    rng = np.random.default_rng(2)
    x_l, y_l = rng.normal(size=(4, 4)).astype("float32"), np.array([0, 1, 0, 1])
    p_model, target = np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.5, 0.0])
    for _ in range(2):  # the running mean carries over from one batch to the next
        x_u = 3 * rng.normal(size=(8, 4)).astype("float32")
        p_u, p_s = np.array(classifier(x_u)), np.array(classifier(2 * x_u))
        p_model = 0.6 * p_model + 0.4 * p_u.mean(axis=0)
        p = p_u * target / np.maximum(p_model, 1e-6)
        p /= p.sum(axis=1, keepdims=True)
        model.threshold = float(np.median(p.max(axis=1)))
        _, _, unlabeled, mask, _ = model.losses_of(x_l, y_l, x_u)
        np.testing.assert_allclose(np.array(model.p_model), p_model, rtol=1e-5)
        m = p.max(axis=1) >= model.threshold
        assert 0 < m.sum() < 8 and set(p.argmax(axis=1)) <= {0, 1}
        np.testing.assert_allclose(np.array(mask), m.astype("float32"))
        ce_u = (m * -np.log(p_s[np.arange(8), p.argmax(axis=1)])).mean()
        np.testing.assert_allclose(float(unlabeled), ce_u, rtol=1e-4)
    assert not np.allclose(p, p_u / p_u.sum(axis=1, keepdims=True))  # the alignment changed the teacher


def test_fixmatch_draws_a_full_labeled_batch_from_fewer_labels():
    """B labeled images a step even when fewer are labeled (they repeat, each pass reshuffled),
    so the unlabeled batch stays mu * B at the lowest budgets, as the reference samples."""
    images = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 1), np.float32)
    labeled = stream.ImageSet.of_arrays(images, np.array([0, 1, 2]))
    pool = stream.ImageSet.of_arrays(np.zeros((50, 4, 4, 1), np.float32))
    (x_l, y_l), x_u = next(semi.batches(labeled, pool, batch_size=8, mu=3, seed=0, steps_per_epoch=1)
                           .as_numpy_iterator())
    assert x_l.shape == (8, 4, 4, 1) and x_u.shape == (24, 4, 4, 1)
    np.testing.assert_array_equal(x_l[:, 0, 0, 0], y_l)  # each image with its own label
    assert sorted(y_l[:3]) == sorted(y_l[3:6]) == [0, 1, 2]  # whole passes over the three labels


def test_fixmatch_learning_rate_follows_its_cosine_and_the_fit_ends_on_the_weights_average():
    """lr(k) = lr cos(7 pi k / 16 K); SGD with Nesterov momentum and weight decay; when the fit
    ends the classifier holds the moving average of its weights over the steps (from the
    first step's weights: avg <- m avg + (1 - m) w after each later step), as FixMatch evaluates."""
    import math

    import tensorflow as tf

    schedule = semi.FixMatchCosine(0.03, 100)
    for k in (0, 50, 100, 150):
        assert float(schedule(k)) == pytest.approx(0.03 * math.cos(7 * math.pi * min(k, 100) / 1600), rel=1e-6)
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    identity = keras.Sequential([keras.layers.Identity()])
    model = semi.FixMatch(classifier, identity, identity, threshold=0.5)
    model.compile(optimizer=semi.optimizer(0.03, 6, ema=0.5))
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.SGD) and opt.nesterov and opt.momentum == 0.9 and opt.weight_decay == 5e-4
    rng = np.random.default_rng(0)
    x_l, y_l, x_u = rng.normal(size=(4, 4)).astype("float32"), np.array([0, 1, 2, 0]), rng.normal(size=(8, 4)).astype("float32")
    ds = tf.data.Dataset.from_tensors(((x_l, y_l), x_u)).repeat()
    raw = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append([np.array(w) for w in classifier.trainable_weights])

    model.fit(ds, epochs=1, steps_per_epoch=6, verbose=0, callbacks=[Record()])
    average = raw[0]  # Keras's average starts from the first step's weights
    for step in raw[1:]:
        average = [0.5 * a + 0.5 * w for a, w in zip(average, step)]
    assert not np.allclose(raw[-1][0], average[0])  # the average is not the last step's weights
    for got, want in zip(classifier.trainable_weights, average):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-6)


def test_fixmatch_pseudo_labels_come_from_inference_mode_and_leave_batchnorm_alone():
    """The teacher (weak view) runs with BatchNorm's moving statistics and updates nothing;
    BatchNorm's statistics come from the trained pass alone: labeled and strong views."""
    keras.utils.set_random_seed(0)
    bn = keras.layers.BatchNormalization(momentum=0.0, center=False, scale=False)  # moving = last batch
    classifier = keras.Sequential([keras.Input((4,)), bn, keras.layers.Dense(3, activation="softmax")])
    identity = keras.Sequential([keras.layers.Identity()])
    double = keras.Sequential([keras.layers.Rescaling(2.0)])
    model = semi.FixMatch(classifier, identity, double, threshold=0.5, teacher="inference")
    rng = np.random.default_rng(1)
    x_l, y_l = rng.normal(size=(5, 4)).astype("float32"), np.array([0, 1, 2, 1, 0])
    x_u = (3 + 2 * rng.normal(size=(9, 4))).astype("float32")  # statistics unlike the labeled images
    teacher = np.array(classifier(x_u, training=False))  # before: moving mean 0, variance 1
    model.threshold = float(np.median(teacher.max(axis=1)))
    _, _, _, mask, _ = model.losses_of(x_l, y_l, x_u)
    np.testing.assert_allclose(np.array(mask), (teacher.max(axis=1) >= model.threshold).astype("float32"))
    trained_pass = np.concatenate([x_l, 2 * x_u])
    np.testing.assert_allclose(np.array(bn.moving_mean), trained_pass.mean(axis=0), rtol=1e-5)


def test_the_batch_teacher_reads_pseudo_labels_from_the_trained_pass_over_every_view():
    """teacher="batch" (the reference form): labeled, weak and strong views go through the
    network together in training mode; the pseudo-labels are the weak rows of that pass (batch
    statistics over all three), and BatchNorm's statistics come from all of them."""
    keras.utils.set_random_seed(0)
    bn = keras.layers.BatchNormalization(momentum=0.0, center=False, scale=False)
    classifier = keras.Sequential([keras.Input((4,)), bn, keras.layers.Dense(3, activation="softmax")])
    identity = keras.Sequential([keras.layers.Identity()])
    double = keras.Sequential([keras.layers.Rescaling(2.0)])
    model = semi.FixMatch(classifier, identity, double, threshold=0.5)  # the default teacher
    rng = np.random.default_rng(1)
    x_l, y_l = rng.normal(size=(5, 4)).astype("float32"), np.array([0, 1, 2, 1, 0])
    x_u = (3 + 2 * rng.normal(size=(9, 4))).astype("float32")
    views = np.concatenate([x_l, x_u, 2 * x_u])
    inference = np.array(classifier(x_u, training=False))  # what the inference-mode teacher would read
    p = np.array(classifier(views, training=True))  # what one trained pass over every view gives
    teacher, strong = p[5:14], p[14:]
    model.threshold = float(np.median(teacher.max(axis=1)))
    _, _, unlabeled, mask, _ = model.losses_of(x_l, y_l, x_u)
    m = teacher.max(axis=1) >= model.threshold
    np.testing.assert_allclose(np.array(mask), m.astype("float32"))
    ce_u = (m * -np.log(strong[np.arange(9), teacher.argmax(axis=1)])).mean()
    np.testing.assert_allclose(float(unlabeled), ce_u, rtol=1e-4)
    np.testing.assert_allclose(np.array(bn.moving_mean), views.mean(axis=0), rtol=1e-5)
    assert not np.allclose(inference, teacher, atol=1e-3)  # the two teachers differ here


def test_augment_policies_keep_shape_and_range_and_none_is_none():
    x = np.random.default_rng(0).random((6, 12, 12, 1)).astype("float32")
    assert augment.build("none") is None
    for policy in ("label-preserving", "orientation-free"):
        y = np.array(augment.build(policy)(x, training=True))
        assert y.shape == x.shape and not np.allclose(y, x)
    flips = {type(l).__name__ for l in augment.build("orientation-free").layers}
    assert "RandomFlip" in flips and "RandomFlip" not in {type(l).__name__ for l in augment.build("label-preserving").layers}
    strong = {type(l).__name__ for l in augment.strong("label-preserving").layers}
    assert {"RandomErasing", "RandomContrast", "RandomBrightness", "RandomShear", "RandomAffine"} <= strong
    geometry = augment.strong("label-preserving", "geometry")  # --strong-view geometry: no grey-level change
    assert {type(l).__name__ for l in geometry.layers} == strong - {"RandomContrast", "RandomBrightness"}
    flat = np.full((64, 12, 12, 1), 0.3, "float32")

    def grey_kept(view):  # the centre of a flat image stays its grey, or the cutout's 0.5
        centre = np.array(view(flat, training=True))[:, 5:7, 5:7]
        return (np.isclose(centre, 0.3) | np.isclose(centre, 0.5)).all()

    assert grey_kept(geometry) and not grey_kept(augment.strong("label-preserving"))


def test_affine_warp_turns_shifts_and_zooms_exactly():
    """The one-warp geometry against NumPy: a quarter turn is rot90, a shift by one pixel
    moves every pixel by one (zeros come in), a zoom by 2 shows the centre twice as large."""
    x = np.random.default_rng(0).random((1, 6, 6, 1)).astype("float32")
    one = np.ones(1, "float32")
    turned = np.array(augment.affine(x, one * np.pi / 2, one, np.zeros((1, 2), "float32")))
    assert any(np.allclose(turned[0, :, :, 0], np.rot90(x[0, :, :, 0], k), atol=1e-5) for k in (1, 3))
    shifted = np.array(augment.affine(x, 0 * one, one, np.array([[1 / 6, 0.0]], "float32")))
    np.testing.assert_allclose(shifted[0, :, 1:, 0], x[0, :, :-1, 0], atol=1e-5)
    np.testing.assert_allclose(shifted[0, :, 0, 0], 0.0)
    grid = np.zeros((1, 5, 5, 1), "float32")
    grid[0, 2, 2, 0] = 1.0  # the centre pixel
    zoomed = np.array(augment.affine(grid, 0 * one, one * 0.5, np.zeros((1, 2), "float32")))
    np.testing.assert_allclose(zoomed[0, 1:4, 1:4, 0], [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]], atol=1e-5)


def test_random_affine_draws_within_its_ranges_and_passes_images_at_inference():
    x = np.random.default_rng(1).random((64, 9, 9, 1)).astype("float32")
    layer = augment.RandomAffine(0.0, 0.0, (0.0, 0.0), seed=1)
    np.testing.assert_allclose(np.array(layer(x, training=True)), x, atol=1e-5)  # empty ranges: identity
    layer = augment.RandomAffine(0.5, 0.2, (-0.3, 0.3), seed=1)
    np.testing.assert_array_equal(np.array(layer(x, training=False)), x)
    y = np.array(layer(x, training=True))
    assert y.shape == x.shape and not np.allclose(y, x) and y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    differs = [not np.allclose(y[i], y[0]) for i in range(1, 64)]
    assert all(differs)  # drawn per image


def test_method_names_carry_semi():
    assert methods.name(None, "random", "none", semi=True) == "scratch-semi"
    assert methods.name("contrastive", "runs/c", "all", 1, semi=True) == "contrastive-top1-semi"
    assert methods.parse("contrastive-top1-semi") == methods.Method("contrastive", {"freeze": "all", "unfreeze_top": 1},
                                                                    semi=True)
    assert methods.is_baseline("scratch-semi") and not methods.is_baseline("contrastive-semi")
    with pytest.raises(Exception, match="unknown method"):
        methods.parse("pixels-logreg-semi")


def test_a_methods_fields_run_it_from_its_encoder_and_on_the_pool_only_when_semi():
    assert methods.parse("contrastive-top1-semi").fields("runs/c", "pool") == {
        "freeze": "all", "unfreeze_top": 1, "unlabeled": "pool", "encoder": "runs/c"}
    assert methods.parse("scratch").fields("runs/c", "pool") == {"encoder": "random", "freeze": "none",
                                                                  "unlabeled": None}


@pytest.mark.slow
def test_scratch_trains_with_augmentation_that_is_not_saved(folders, tmp_path):
    out, results = tmp_path / "ft", tmp_path / "r.csv"
    result = invoke("fine-tune", "--data", folders / "labeled", "--encoder", "random", "--freeze", "none",
                    "--labels-per-class", "3", "--epochs", "2", "--out", out, "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    row = _row(results, out)
    assert row["method"] == "scratch" and row["augment"] == "label-preserving"
    saved = keras.saving.load_model(out / "classifier.keras")
    assert _augmentation_layers(saved) == []
    leaky = augment.training_model(saved, augment.build("label-preserving"))  # what a leak would look like
    assert len(_augmentation_layers(leaky)) == 3
    out2 = tmp_path / "ft2"
    assert invoke("fine-tune", "--data", folders / "labeled", "--encoder", "random", "--freeze", "none",
                  "--augment", "none", "--labels-per-class", "3", "--epochs", "2", "--out", out2,
                  "--results", results, *TINY).exit_code == 0
    assert _row(results, out2)["augment"] == "none"


def test_bad_augment_and_threshold_are_refused(folders):
    for args, pattern in ((["--augment", "flips"], "augment"), (["--threshold", "1.5"], "threshold"),
                          (["--encoder", "pixels", "--unlabeled", folders / "pool"], "--unlabeled")):
        result = invoke("fine-tune", "--data", folders / "labeled", *args)
        assert result.exit_code == 2 and pattern in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_scratch_semi_writes_the_row_it_claims(folders, tmp_path, monkeypatch):
    out, results = tmp_path / "semi", tmp_path / "r.csv"
    traces, step = [], semi.FixMatch.train_step
    monkeypatch.setattr(semi.FixMatch, "train_step", lambda model, data: traces.append(1) or step(model, data))
    result = invoke("fine-tune", "--data", folders / "labeled", "--encoder", "random", "--freeze", "none",
                    "--unlabeled", folders / "pool", "--steps", "6", "--mu", "2", "--threshold", "0.5",
                    "--strong-view", "geometry", "--labels-per-class", "3", "--out", out, "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    row = _row(results, out)
    assert row["method"] == "scratch-semi" and row["unlabeled"] == str(folders / "pool")
    assert row["mu"] == 2 and row["threshold"] == 0.5 and row["steps"] == 6 and row["n_unlabeled"] == 36
    assert row["teacher"] == "batch" and row["semi_learning_rate"] == 0.03 and row["align"]
    assert row["strong_view"] == "geometry"
    assert 0 <= row["mask_rate"] <= 1 and row["test_in_unlabeled"] == 0 and row["seconds"] > 0
    history = pd.read_csv(out / "history-semi.csv")
    assert len(history) == 1 and {"mask_rate", "labeled_loss", "unlabeled_loss"} <= set(history.columns)
    assert 0 < history["seconds"].sum() <= row["seconds"]  # each epoch's wall time, within the run's
    assert "mask_rate=" in result.output and "seconds=" not in result.output
    assert "decoded 36 images of" in result.output  # the pool's files decoded once, not every pass
    assert "test accuracy" in result.output
    assert len(traces) == 1  # the step traced once: its optimizer was built before the fit


@pytest.mark.slow
def test_pretrained_semi_keeps_bottom_blocks_and_reports_leakage(folders, tmp_path):
    enc = tmp_path / "enc"
    assert invoke("pretrain", "--data", folders / "labeled", "--objective", "autoencoder", "--epochs", "1",
                  "--out", enc, "--results", tmp_path / "p.csv", *TINY).exit_code == 0
    before = {l.name: [np.array(w) for w in l.weights]
              for l in keras.saving.load_model(enc / "encoder.keras").layers}
    out, results = tmp_path / "semi", tmp_path / "r.csv"
    # the labeled folder as the pool: its test images are in it, which must be reported
    result = invoke("fine-tune", "--data", folders / "labeled", "--encoder", enc, "--freeze", "all", "--unfreeze-top", "1",
                    "--unlabeled", folders / "labeled", "--steps", "4", "--mu", "2", "--labels-per-class", "3",
                    "--out", out, "--results", results, "--batch-size", "4")
    assert result.exit_code == 0, result.output
    row = _row(results, out)
    assert row["method"] == "autoencoder-top1-semi" and row["test_in_unlabeled"] == row["n_test"] > 0
    assert "test images are in the unlabeled pool" in result.output
    encoder = keras.saving.load_model(out / "classifier.keras").get_layer("features").get_layer("encoder")
    after = {l.name: [np.array(w) for w in l.weights] for l in encoder.layers}
    assert all(np.array_equal(a, b) for a, b in zip(after["block1_conv1"], before["block1_conv1"]))
    assert not np.array_equal(after["block2_conv1"][0], before["block2_conv1"][0])  # the top block trained
    assert all(np.array_equal(a, b) for a, b in zip(after["block2_bn1"], before["block2_bn1"]))  # BN kept


@pytest.mark.slow
def test_the_row_counts_skipped_files_of_every_source(folders, tmp_path):
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(folders / "pool", pool)
    (pool / "h" / "empty.png").write_bytes(b"")  # unreadable at listing
    (pool / "v" / "junk.png").write_bytes(b"not an image at all")  # unreadable at listing
    good = (pool / "d" / "0.png").read_bytes()
    (pool / "d" / "torn.png").write_bytes(good[: len(good) // 2])  # its header reads; decoding fails
    test = make_labeled_dir(tmp_path / "test", per_class=4, classes=("h", "v", "d"), seed=11)  # not the labeled images
    (test / "h" / "bad.png").write_bytes(b"")
    out, results = tmp_path / "semi", tmp_path / "r.csv"
    # A file that fails while decoding is counted once the run has read it. 6 steps draw 6 x 2 x 4 = 48
    # pool images, more than the pool's 37 files, so the pool is decoded once, in full, before training;
    # at 2 steps the run streams only part of the pool, and whether it reached torn.png depended on how
    # far tf.data read ahead (CI once counted 2).
    result = invoke("fine-tune", "--data", folders / "labeled", "--test-data", test, "--encoder", "random",
                    "--freeze", "none", "--unlabeled", pool, "--steps", "6", "--mu", "2", "--labels-per-class", "3",
                    "--out", out, "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    row = _row(results, out)
    assert row["skipped_unlabeled"] == 3 and row["skipped_test_data"] == 1 and row["skipped_data"] == 0
    assert row["skipped_files"] == 4
