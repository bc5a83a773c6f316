"""Which labeled images are the pool (labels may be drawn from it) and which are the test
split: the one rule every command that reports on a test split follows.

The test split is `--test-data` when given, else the split the source defines (a
built-in's fixed one), else a content-hash split of every class (`data.split_test`): it
depends only on image content, never on the seed or the label budget, so methods and
budgets are scored on the same images. The pool never holds an image whose content is in
the test split (duplicates are left out of the pool and counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer import builtins, data, stream
from transfer.errors import TransferError
from transfer.listing import Listing, report_skipped


@dataclass
class Splits:
    """The labeled source, its pool positions, and the test images (`test_source` at `test_index`)."""

    source: Listing
    pool: np.ndarray
    test_source: Listing
    test_index: np.ndarray
    duplicates_dropped: int = 0  # pool images left out because the same content is in the test split

    def labeled(self, per_class: int | None, seed: int, image_size: int, log=print) -> Listing:
        """The labeled training images, decoded into memory: `per_class` of every class drawn
        from the pool with `seed` (None: the whole pool); files that fail to decode reported."""
        chosen = data.sample_per_class(self.source.labels, self.pool, per_class, seed, self.source.class_names)
        return self.at(chosen, image_size, log)

    def at(self, positions: np.ndarray, image_size: int, log=print) -> Listing:
        """The images of the source at `positions` (labeled training images), decoded into memory."""
        train = stream.load(self.source, positions, image_size)
        report_skipped(train.skipped, log, "while decoding")
        return train

    def pool_set(self, image_size: int) -> stream.ImageSet:
        """The pool's images (streamed)."""
        return stream.ImageSet(self.source, self.pool, image_size)

    def test_set(self, image_size: int) -> stream.ImageSet:
        """The test images (streamed, never all in memory)."""
        return stream.ImageSet(self.test_source, self.test_index, image_size)


def open_labeled(src: str, test_src: str | None, test_fraction: float, image_size: int,
                 channels: int | None, log=print) -> Splits:
    """Open the labeled source (and the test source), report skipped files through `log`,
    and split them; an empty test split is refused."""
    source = stream.open_source(src, True, image_size, channels)
    report_skipped(source.skipped, log)
    if source.unlabeled_tasks:
        log(f"left out {source.unlabeled_tasks} task(s) of {src} that have no label (skipped or not yet labeled)")
    data.check_classes(source, src)
    if test_src:
        test_source = stream.open_source(test_src, True, image_size, source.channels)
        report_skipped(test_source.skipped, log)
        classes = class_union(source.class_names, test_source.class_names)
        source.with_classes(classes), test_source.with_classes(classes)
        splits = Splits(source, np.arange(len(source)), test_source, np.arange(len(test_source)))
    elif source.test_mask is not None:
        splits = Splits(source, np.flatnonzero(~source.test_mask), source, np.flatnonzero(source.test_mask))
    else:
        pool, test = data.split_test(source.labels, source.ids, test_fraction)
        splits = Splits(source, pool, source, test)
    if len(splits.test_index) == 0:
        raise TransferError(f"{src}: the test split is empty; give --test-data or more images")
    return _without_test_content(splits, log)


def class_union(labeled: list[str], test: list[str]) -> list[str]:
    """The classes of a labeled source and its test source together: a choice of a few labels
    often misses a class the test set holds, and its test images then count as errors (the
    classifier has the class, no label of it). Sorted when both are (folders, CSV labels), else
    the labeled source's order, then the test's new classes."""
    extra = [c for c in test if c not in labeled]
    if not extra:
        return list(labeled)
    if list(labeled) == sorted(labeled) and list(test) == sorted(test):
        return sorted([*labeled, *extra])
    return [*labeled, *extra]


def _without_test_content(splits: Splits, log) -> Splits:
    """The split is by content: a pool image whose bytes are also in the test split (the same file
    listed twice, a copy under another name or class) is left out of the pool, and counted."""
    copies = np.isin(splits.source.ids[splits.pool], splits.test_source.ids[splits.test_index])
    if copies.any():
        log(f"left {int(copies.sum())} image(s) out of the pool: the same content is in the test split")
        splits.pool, splits.duplicates_dropped = splits.pool[~copies], int(copies.sum())
        if len(splits.pool) == 0:
            raise TransferError(f"{splits.source.src}: every image is also in the test split (the same content); "
                                "nothing is left to learn from")
    return splits


def open_pool(src: str, labeled: bool, image_size: int, channels: int | None, log=print) -> tuple[Listing, np.ndarray]:
    """(source, the positions of its pool): a labeled source (built-ins always) without its test
    split, as fine-tune splits it; an unlabeled one whole."""
    if labeled or builtins.is_builtin(src):
        found = open_labeled(src, None, data.DEFAULT_TEST_FRACTION, image_size, channels, log)
        return found.source, found.pool
    source = stream.open_source(src, False, image_size, channels)
    report_skipped(source.skipped, log)
    return source, np.arange(len(source))
