import csv

import numpy as np
import pytest
from conftest import make_labeled_dir, stripes, write_image

from transfer import data, stream
from transfer.config import DEFAULT_TEST_FRACTION
from transfer.errors import TransferError


def load_unlabeled(src, image_size, channels=None):
    """Every image of an unlabeled source, the way the pipelines read it: listed, then decoded."""
    source = stream.open_source(src, False, image_size, channels)
    return _decoded(source, image_size)


def load_labeled(src, image_size, channels=None, class_names=None):
    source = stream.open_source(src, True, image_size, channels, class_names)
    return _decoded(source, image_size)


def _decoded(source, image_size):
    images = stream.load(source, np.arange(len(source)), image_size)
    images.skipped = source.skipped + images.skipped  # unreadable at listing, then at decoding
    images.test_mask = source.test_mask
    return images


def test_directory_of_images_loads_nested_files_in_unit_range(unlabeled_dir):
    ds = load_unlabeled(str(unlabeled_dir), image_size=8)
    assert ds.images.shape == (24, 8, 8, 1)
    assert ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert any("nested" in n for n in ds.paths)
    assert len(set(ds.ids)) == 24


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3), ("RGBA", 3)])
def test_gray_rgb_rgba_decoded_to_expected_channels(tmp_path, mode, channels):
    make_labeled_dir(tmp_path / "d", per_class=3, mode=mode)
    ds = load_labeled(str(tmp_path / "d"), image_size=10)
    assert ds.images.shape == (6, 10, 10, channels)
    assert ds.class_names == ["h", "v"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_gray_to_rgb_and_back_are_explicit_conversions(tmp_path):
    make_labeled_dir(tmp_path / "d", per_class=2, mode="L")
    gray = load_labeled(str(tmp_path / "d"), 8, channels=1)
    rgb = load_labeled(str(tmp_path / "d"), 8, channels=3)
    np.testing.assert_allclose(rgb.images[..., 0], gray.images[..., 0], atol=1e-6)
    np.testing.assert_allclose(rgb.images[..., 2], gray.images[..., 0], atol=1e-6)
    back = data.convert_channels(rgb.images, 1)
    np.testing.assert_allclose(back, gray.images, atol=1e-5)


def test_mixed_gray_and_rgb_folder_becomes_rgb(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "a.png", stripes("h", 8, rng), "L")
    write_image(tmp_path / "b.png", stripes("v", 8, rng), "RGB")
    ds = load_unlabeled(str(tmp_path), 8)
    assert ds.images.shape == (2, 8, 8, 3)


def test_sixteen_bit_png_scaled_by_its_range(tmp_path):
    from PIL import Image

    arr = np.full((6, 6), 65535, dtype=np.uint16)
    arr[:3] = 0
    Image.fromarray(arr).save(tmp_path / "deep.png")
    img = data.decode_image(tmp_path / "deep.png", 6)
    assert img.shape == (6, 6, 1)
    assert img[:3].max() == 0.0 and img[3:].min() == pytest.approx(1.0)


def test_multispectral_npy_keeps_its_channels(tmp_path):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((12, 12, 5)).astype(np.float32))
    np.save(tmp_path / "b.npy", np.zeros((12, 12, 5), dtype=np.uint16))
    ds = load_unlabeled(str(tmp_path), 6)
    assert ds.images.shape == (2, 6, 6, 5)


def test_csv_manifest_paths_relative_to_the_csv(tmp_path):
    make_labeled_dir(tmp_path / "imgs", per_class=3)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "extra"])
        for c in ("h", "v"):
            for i in range(3):
                w.writerow([f"imgs/{c}/{i}.png", f"class_{c}", "ignored"])
    ds = load_labeled(str(tmp_path / "m.csv"), 8)
    assert ds.class_names == ["class_h", "class_v"]
    assert np.bincount(ds.labels).tolist() == [3, 3]


def test_csv_manifest_with_missing_file_or_empty_label_is_refused(tmp_path):
    make_labeled_dir(tmp_path / "imgs", per_class=1)
    (tmp_path / "m.csv").write_text("path,label\nimgs/h/0.png,h\nimgs/h/nope.png,h\n")
    with pytest.raises(TransferError, match="do not exist.*nope.png"):
        load_labeled(str(tmp_path / "m.csv"), 8)
    (tmp_path / "e.csv").write_text("path,label\nimgs/h/0.png,\n")
    with pytest.raises(TransferError, match="empty label"):
        load_labeled(str(tmp_path / "e.csv"), 8)


def test_corrupt_and_empty_files_are_skipped_and_counted(unlabeled_dir):
    (unlabeled_dir / "broken.png").write_bytes(b"this is not a png")
    (unlabeled_dir / "empty.jpg").write_bytes(b"")
    ds = load_unlabeled(str(unlabeled_dir), 8)
    assert len(ds) == 24
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in ds.skipped) == ["broken.png", "empty.jpg"]


def test_no_readable_images_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(TransferError, match="no readable images"):
        load_unlabeled(str(tmp_path), 8)


def test_missing_path_and_empty_directory_are_errors(tmp_path):
    with pytest.raises(TransferError, match="not found"):
        load_unlabeled(str(tmp_path / "missing"), 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransferError, match="no image files"):
        load_unlabeled(str(tmp_path / "empty"), 8)
    with pytest.raises(TransferError, match="no class subfolders"):
        load_labeled(str(tmp_path / "empty"), 8)


def test_symlink_loop_does_not_hang(unlabeled_dir):
    (unlabeled_dir / "loop").symlink_to(unlabeled_dir, target_is_directory=True)
    assert len(load_unlabeled(str(unlabeled_dir), 8)) == 24


def test_digits_builtin_and_its_pretraining_pool_excludes_test_split():
    full = load_labeled("digits", 8)
    assert full.images.shape == (1797, 8, 8, 1) and len(full.class_names) == 10
    _, test_idx = data.split_test(full.labels, full.ids, DEFAULT_TEST_FRACTION)
    pool = load_unlabeled("digits", 8)
    assert pool.labels is None
    assert not set(full.ids[test_idx]) & set(pool.ids)
    assert len(pool) + len(test_idx) == 1797


def test_test_split_is_independent_of_seed_budget_and_file_order():
    full = load_labeled("digits", 8)
    train, test = data.split_test(full.labels, full.ids, 0.2)
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(full)
    perm = np.random.default_rng(0).permutation(len(full))
    _, test2 = data.split_test(full.labels[perm], full.ids[perm], 0.2)
    assert set(full.ids[perm][test2]) == set(full.ids[test])
    for budget, seed in [(1, 0), (5, 3), (20, 7)]:
        chosen = data.sample_per_class(full.labels, train, budget, seed, full.class_names)
        assert len(chosen) == 10 * budget and not set(chosen) & set(test)
        assert np.bincount(full.labels[chosen]).tolist() == [budget] * 10


def test_labeled_draws_differ_by_seed_and_refuse_too_few(labeled_dir):
    ds = load_labeled(str(labeled_dir), 8)
    pool = np.arange(len(ds))
    a = data.sample_per_class(ds.labels, pool, 3, 0, ds.class_names)
    b = data.sample_per_class(ds.labels, pool, 3, 1, ds.class_names)
    assert a.tolist() != b.tolist()
    with pytest.raises(TransferError, match="class 'h' has 12 training image.*labels_per_class=13"):
        data.sample_per_class(ds.labels, pool, 13, 0, ds.class_names)


def test_single_class_is_refused(tmp_path):
    make_labeled_dir(tmp_path / "one", classes=("h",), per_class=4)
    ds = load_labeled(str(tmp_path / "one"), 8)
    with pytest.raises(TransferError, match="at least 2 classes"):
        data.check_classes(ds, "one")


def test_textures_builtin_has_a_fixed_top_bottom_split():
    ds = load_labeled("textures", 16)
    assert ds.class_names == ["brick", "grass", "gravel"]
    assert ds.test_mask is not None and ds.test_mask.sum() == 3 * 128
    pool = load_unlabeled("textures", 16)
    assert not set(ds.ids[ds.test_mask]) & set(pool.ids)


def test_photos_and_faces_builtins():
    photos = load_unlabeled("photos", 16)
    assert photos.images.shape == (4000, 16, 16, 1) and photos.labels is None
    with pytest.raises(TransferError, match="has no labels"):
        load_labeled("photos", 16)
    faces = load_labeled("faces", 16)
    assert faces.class_names == ["face", "non-face"] and np.bincount(faces.labels).tolist() == [100, 100]


def test_odd_but_valid_images_load(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(np.array([[200]], dtype=np.uint8)).save(tmp_path / "one_pixel.png")
    Image.fromarray(stripes("h", 16, rng)).convert("RGB").quantize(8).save(tmp_path / "palette.png")
    Image.fromarray(stripes("v", 16, rng)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(stripes("d", 16, rng)).save(tmp_path / "зображення ñ 图.png")
    Image.new("L", (8000, 8000), 128).save(tmp_path / "huge.png")
    ds = load_unlabeled(str(tmp_path), 8)
    assert len(ds) == 5 and not ds.skipped
    assert ds.images.shape == (5, 8, 8, 3)  # palette and CMYK are color, so all become RGB
    huge = ds.images[[i for i, n in enumerate(ds.paths) if n.endswith("huge.png")][0]]
    np.testing.assert_allclose(huge, 128 / 255, atol=1e-3)
    assert any("图" in n for n in ds.paths)


def test_truncated_and_fake_images_are_skipped(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    write_image(tmp_path / "good.png", stripes("h", 16, rng))
    Image.fromarray(stripes("v", 64, rng)).save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    (tmp_path / "whole.jpg").unlink()
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / "text.png").write_text("I am a text file")
    ds = load_unlabeled(str(tmp_path), 8)
    assert len(ds) == 1 and sorted(p.rsplit("/", 1)[-1] for p, _ in ds.skipped) == ["cut.jpg", "cut.png", "text.png"]


def test_class_folders_with_zero_or_one_image(tmp_path):
    make_labeled_dir(tmp_path / "d", per_class=5)
    (tmp_path / "d" / "empty").mkdir()
    ds = load_labeled(str(tmp_path / "d"), 8)
    with pytest.raises(TransferError, match=r"class\(es\) \['empty'\] have no readable images"):
        data.check_classes(ds, "d")
    make_labeled_dir(tmp_path / "one", per_class=5)
    make_labeled_dir(tmp_path / "one", per_class=1, classes=("d",))
    ds = load_labeled(str(tmp_path / "one"), 8)
    train, test = data.split_test(ds.labels, ds.ids, 0.2)
    d = ds.class_names.index("d")
    assert (ds.labels[train] == d).sum() == 1 and (ds.labels[test] == d).sum() == 0


def test_the_patches_set_is_ten_photographs_split_by_place():
    """The texture development set: 750 patches of each photograph, 150 of them from its bottom
    quarter (the test split), so no test patch shares a pixel with a pool patch; a flat pool patch
    identical to a test patch is left out."""
    from transfer import builtins

    source = builtins.load("patches", 28, None, True, split="all")
    assert source.class_names == list(builtins.PATCH_SOURCES) and 7490 <= len(source) <= 7500
    assert np.bincount(source.labels[source.test_mask]).tolist() == [150] * 10
    assert (np.bincount(source.labels[~source.test_mask]) >= 595).all()
    images = source.images
    assert images.shape == (len(source), 28, 28, 1) and 0.0 <= images.min() and images.max() <= 1.0
    pool = builtins.load("patches", 28, None, True, split="pretrain")  # no test patch's content among them
    assert len(pool) == len(source) - 1500 and not np.isin(pool.ids, source.ids[source.test_mask]).any()


def test_the_fills_set_is_five_animals_in_two_surfaces_split_by_silhouette():
    """The grey-level development set: 500 images of each (animal, surface) class, each silhouette
    once; the test split is the animals' own, so no test silhouette is in the pool; a moon fill is
    brighter than a gravel fill of the same animal, on average, and the background stays black."""
    from transfer import builtins

    source = builtins.load("fills", 28, None, True, split="all")
    assert len(source) == 5000 and np.bincount(source.labels).tolist() == [500] * 10
    assert source.class_names[:2] == ["bird-moon", "bird-gravel"]
    images = source.images
    assert images.shape == (5000, 28, 28, 1) and 0.0 <= images.min() and images.max() <= 1.0
    inside = images[..., 0] > 0.05
    mean = np.array([images[i, ..., 0][inside[i]].mean() for i in range(len(images))])
    assert mean[source.labels % 2 == 0].mean() > mean[source.labels % 2 == 1].mean() + 0.2
    assert (images[:, 0, 0, 0] == 0).mean() > 0.95
    animals = builtins.load("animals", 28, None, True, split="all")
    assert source.test_mask.sum() == sum(animals.test_mask[animals.labels == builtins.ANIMALS.index(a)].sum()
                                         for a in builtins.FILL_ANIMALS)
    pool = builtins.load("fills", 28, None, True, split="pretrain")
    assert len(pool) == 5000 - source.test_mask.sum() and not np.isin(pool.ids, source.ids[source.test_mask]).any()
