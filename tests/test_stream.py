"""Streaming sources: listing without decoding, tf.data decoding, prepared TFRecord caches."""

import gc
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke, make_labeled_dir, stripes, write_image

from transfer import data, stream
from transfer.errors import TransferError




@pytest.fixture
def mixed_dir(tmp_path):
    """Gray and RGB images of odd sizes, a 16-bit one, an .npy, and a truncated PNG."""
    root = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    for i in range(6):
        write_image(root / "a" / f"g{i}.png", stripes("hvd"[i % 3], 13 + i, rng))
        write_image(root / "b" / f"c{i}.jpg", stripes("hvd"[i % 3], 20, rng), mode="RGB")
    from PIL import Image

    Image.fromarray((rng.random((9, 11)) * 65535).astype(np.uint16)).save(root / "a" / "deep.png")
    np.save(root / "b" / "arr.npy", rng.random((10, 10, 3)).astype(np.float32))
    good = (root / "a" / "g0.png").read_bytes()
    (root / "b" / "torn.png").write_bytes(good[: len(good) // 2])  # valid header, truncated data
    return root


def decoded_files(root, size):
    """{path: (pixels by the one decoder, label)} for every readable file below root's class folders."""
    out = {}
    for label, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for path in sorted(folder.iterdir()):
            try:
                out[str(path)] = (data.decode_image(path, size, 3), label)
            except TransferError:
                pass
    return out


def test_a_file_failing_in_every_pass_counts_once(mixed_dir):
    """A torn file streamed in two passes (epochs, or the pool's repeats) fails in each: the
    rows and the log line count files, not failures."""
    from transfer.listing import report_skipped

    listing = stream.open_source(str(mixed_dir), True, 12)
    for _ in range(2):
        stream.load(listing, np.arange(len(listing)), 12)
    torn = str(mixed_dir / "b" / "torn.png")
    assert [n for n, _ in listing.failed] == [torn, torn] and listing.unreadable() == 1
    listing.skipped.append(("gone.png", "gone.png: not found"))
    assert listing.unreadable() == 2
    lines = []
    report_skipped(listing.failed, lines.append, "while streaming")
    assert lines == [f"skipped 1 unreadable file(s) while streaming; first: {listing.failed[0][1]}"]


def test_streamed_pixels_equal_the_decoder_file_by_file(mixed_dir):
    listing = stream.open_source(str(mixed_dir), True, 12)
    assert listing.channels == 3 and len(listing) == 15  # the torn file passes its header check
    streamed = stream.load(listing, np.arange(len(listing)), 12)
    assert [n for n, _ in listing.failed] == [str(mixed_dir / "b" / "torn.png")]
    assert [n for n, _ in streamed.skipped] == [str(mixed_dir / "b" / "torn.png")]
    expected = decoded_files(mixed_dir, 12)
    assert sorted(streamed.paths) == sorted(expected) and len(expected) == 14
    for path, image, label in zip(streamed.paths, streamed.images, streamed.labels):
        np.testing.assert_array_equal(image, expected[path][0])
        assert label == expected[path][1]


def test_dataset_shuffles_per_epoch_and_shards_disjointly(labeled_dir):
    listing = stream.open_source(str(labeled_dir), True, 8)
    index = np.arange(len(listing))
    ds = stream.dataset(listing, index, 8, batch_size=5, shuffle=True, seed=3)
    first, second = (np.concatenate(list(ds.as_numpy_iterator())) for _ in range(2))
    assert first.shape == (24, 8, 8, 1) and not np.array_equal(first, second)
    np.testing.assert_allclose(np.sort(first.ravel()), np.sort(second.ravel()))  # same images, new order
    parts = [[int(i) for i, _, _ in stream.records(listing, index, 8, shard=(2, k)).as_numpy_iterator()]
             for k in range(2)]
    assert set(parts[0]).isdisjoint(parts[1]) and sorted(parts[0] + parts[1]) == list(range(24))


def test_forever_stream_gives_full_batches_of_reshuffled_whole_passes(labeled_dir):
    """FixMatch's streams: every batch full (one shape, one trace of the step), and every
    pass over the images holds each of them exactly once, in a new order each time."""
    files = stream.open_source(str(labeled_dir), True, 8)
    in_memory = stream.load(files, np.arange(len(files)), 8)
    decoded_once, _ = stream.decode_once(files, np.arange(len(files)), 8, passes=5, log=lambda line: None)
    for listing in (files, in_memory, decoded_once):
        ds = stream.dataset(listing, np.arange(24), 8, batch_size=5, shuffle=True, seed=1, with_labels=True,
                            forever=True)
        batches = list(ds.take(24).as_numpy_iterator())  # 120 images: five passes of 24
        assert {x.shape for x, _ in batches} == {(5, 8, 8, 1)} and {y.shape for _, y in batches} == {(5,)}
        images = np.concatenate([x for x, _ in batches]).reshape(5, 24, -1)
        key = [sorted(map(bytes, p)) for p in images]
        assert all(k == key[0] for k in key) and len(set(key[0])) == 24  # each pass: every image once
        assert not np.array_equal(images[0], images[1])  # reshuffled


def test_pretraining_batches_are_full_and_an_epoch_is_one_pass_rounded_up():
    """Pretraining draws full batches (one shape: traced once; no batch of one image at an
    epoch's end), ceil(n / batch) of them an epoch, from reshuffled whole passes."""
    images = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 1), np.float32)
    batches, steps = stream.ImageSet.of_arrays(images).train_batches(4, seed=3)
    assert steps == 3  # 10 images, batches of 4
    drawn = [x[:, 0, 0, 0] for x in batches.take(5).as_numpy_iterator()]  # 20 images: two passes
    assert [len(d) for d in drawn] == [4] * 5
    order = np.concatenate(drawn).astype(int)
    assert sorted(order[:10]) == sorted(order[10:]) == list(range(10))
    assert list(order[:10]) != list(order[10:])  # reshuffled


def test_decode_once_keeps_the_decoders_pixels_drops_torn_files_and_removes_its_file(mixed_dir, monkeypatch):
    listing, torn, lines = stream.open_source(str(mixed_dir), True, 12), str(mixed_dir / "b" / "torn.png"), []
    assert stream.decode_once(listing, np.arange(len(listing)), 12, passes=1)[0] is listing  # one pass: no gain
    once, index = stream.decode_once(listing, np.arange(len(listing)), 12, passes=2, log=lines.append)
    assert once.store.folder is not None and len(once) == len(index) == 14 and "decoded 14 images" in lines[0]
    assert [n for n, _ in listing.failed] == [torn] and [n for n, _ in once.failed] == [torn]
    expected = decoded_files(mixed_dir, 12)
    read = stream.load(once, index, 12)
    assert sorted(read.paths) == sorted(expected)
    for path, image, label in zip(read.paths, read.images, read.labels):
        np.testing.assert_allclose(image, expected[path][0], atol=5e-4)  # stored as float16
        assert label == expected[path][1]
    x, y = next(stream.dataset(once, index, 12, batch_size=14, with_labels=True).as_numpy_iterator())
    np.testing.assert_array_equal(x, read.images)
    np.testing.assert_array_equal(y, read.labels)
    with pytest.raises(TransferError, match="decoded at 12x12"):
        stream.dataset(once, index, 16, batch_size=4)
    assert stream.decode_once(once, index, 12, 2)[0] is once and stream.decode_once(read, index, 12, 2)[0] is read
    folder = Path(once.store.folder.name)
    assert (folder / "images.f16").stat().st_size == 14 * 12 * 12 * 3 * 2
    del once, read
    gc.collect()
    assert not folder.exists()  # removed with the listing that owns it
    # No room on the disk: streamed from the files as before, and said so.
    monkeypatch.setattr("transfer.decoded.shutil.disk_usage", lambda path: namedtuple("U", "free")(0))
    same, same_index = stream.decode_once(listing, np.arange(len(listing)), 12, passes=2, log=lines.append)
    assert same is listing and list(same_index) == list(range(15)) and "not decoding" in lines[-1]


def test_prepare_round_trip_and_errors(mixed_dir, tmp_path):
    out = tmp_path / "prep"
    result = invoke("prepare", mixed_dir, "--out", out, "--image-size", "12", "--labeled")
    assert result.exit_code == 0, result.output
    assert result.output.count("prepared 15/15 (") == 1  # progress, its last line once
    info = json.loads((out / "prepared.json").read_text())
    assert info["images"] == 14 and info["skipped"] == 1 and info["class_names"] == ["a", "b"]
    prepared = stream.open_source(str(out), True, 12)
    back = stream.load(prepared, np.arange(len(prepared)), 12)
    files = stream.load(stream.open_source(str(mixed_dir), True, 12), np.arange(15), 12)
    order, expected = np.argsort(back.ids), np.argsort(files.ids)
    np.testing.assert_allclose(back.images[order], files.images[expected], atol=5e-4)  # float16 storage
    np.testing.assert_array_equal(back.labels[order], files.labels[expected])
    gray = stream.load(stream.open_source(str(out), False, 12, channels=1), [0, 1], 12)
    assert gray.images.shape == (2, 12, 12, 1)

    again = invoke("prepare", mixed_dir, "--out", out, "--image-size", "12")
    assert again.exit_code == 2 and "already exists" in again.stderr
    wrong = invoke("pretrain", "--data", out, "--out", tmp_path / "enc", "--image-size", "16")
    assert wrong.exit_code == 2 and "prepared at 12x12" in wrong.stderr
    assert not (tmp_path / "enc").exists()
    unlabeled = tmp_path / "prep-unlabeled"
    assert invoke("prepare", mixed_dir, "--out", unlabeled, "--image-size", "12").exit_code == 0
    with pytest.raises(TransferError, match="prepared without labels"):
        stream.open_source(str(unlabeled), True, 12)


@pytest.mark.slow
def test_pretrain_and_fine_tune_from_a_prepared_source(tmp_path):
    src = make_labeled_dir(tmp_path / "src", per_class=10, classes=("h", "v", "d"))
    prepared = tmp_path / "prep"
    assert invoke("prepare", src, "--out", prepared, "--image-size", "8", "--labeled").exit_code == 0
    results = tmp_path / "results.csv"
    tiny = ["--filters", "4,8", "--batch-size", "8", "--results", results]
    pre = invoke("pretrain", "--data", prepared, "--out", tmp_path / "enc", "--image-size", "8", "--epochs", "2",
                 "--objective", "autoencoder", *tiny)
    assert pre.exit_code == 0, pre.output
    assert "streamed" in pre.output
    for source, name in ((prepared, "ft-prepared"), (src, "ft-files")):
        ft = invoke("fine-tune", "--data", source, "--encoder", tmp_path / "enc", "--labels-per-class", "4",
                    "--unfreeze-top", "0", "--out", tmp_path / name, *tiny)
        assert ft.exit_code == 0, ft.output
    rows = pd.read_csv(results)
    pre_row, from_prepared, from_files = rows.iloc[0], rows.iloc[1], rows.iloc[2]
    assert pre_row["train_flops_per_image"] > 0 and pre_row["gflops_per_second"] > 0
    assert pre_row["strategy"] == "auto" and pre_row["replicas"] == 1
    # The same images, split by content: the same test set, whichever way they are read.
    assert from_prepared["n_test"] == from_files["n_test"] == 6
    # Leakage is found by content id whichever way the images were read (all were pretrained on here).
    assert from_prepared["test_in_pretraining"] == from_files["test_in_pretraining"] == 6
    assert abs(from_prepared["test_accuracy"] - from_files["test_accuracy"]) <= 1 / 6 + 1e-9


def test_every_store_serves_the_same_images_through_an_image_set(tmp_path):
    """Files, in memory, prepared shards and decoded once: an ImageSet over each gives the
    same images with the same labels and ids, in order, in full training batches too."""
    source = make_labeled_dir(tmp_path / "lab", per_class=5, classes=("h", "v", "d"), size=14)
    files = stream.open_source(str(source), True, 12)
    assert invoke("prepare", source, "--out", tmp_path / "prep", "--image-size", "12", "--labeled").exit_code == 0
    decoded, index = stream.decode_once(files, np.arange(len(files)), 12, passes=2, log=lambda m: None)
    sets = {"files": stream.ImageSet(files, np.arange(len(files)), 12),
            "memory": stream.ImageSet.of(stream.load(files, np.arange(len(files)), 12)),
            "prepared": stream.ImageSet.of(stream.open_source(str(tmp_path / "prep"), True, 12), image_size=12),
            "decoded": stream.ImageSet(decoded, index, 12)}
    assert {name: type(s.listing.store).__name__ for name, s in sets.items()} == {
        "files": "Files", "memory": "InMemory", "prepared": "Prepared", "decoded": "Decoded"}
    reference = None
    for name, images in sets.items():
        x, y = map(np.concatenate, zip(*images.batches(4, with_labels=True).as_numpy_iterator()))
        assert x.shape == (15, 12, 12, 1) and len(images) == 15, name
        batches, steps = images.train_batches(4, seed=1, with_labels=True)
        drawn = [b for b, _ in batches.take(2 * steps).as_numpy_iterator()]
        assert steps == 4 and all(len(b) == 4 for b in drawn), name  # full batches, ceil(15 / 4) a pass
        reference = reference or (x, y, images.ids)
        np.testing.assert_allclose(x, reference[0], atol=5e-4, err_msg=name)  # float16 in shards and decoded files
        np.testing.assert_array_equal(y, reference[1], err_msg=name)
        np.testing.assert_array_equal(images.ids, reference[2], err_msg=name)
