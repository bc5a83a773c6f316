"""Label budgets the way users have them: a total number of images to label, chosen from the
pool blindly or by a selection, not "N of every class".

- `random`: N images drawn uniformly, unstratified; at 1-2 per class several classes
  may get none (at 10 draws over 10 classes, about 3.5 are missing on average).
- `stratified`: N / C of every class (the remainder to randomly chosen classes): the
  oracle of `--labels-per-class`, which a user with an unlabeled pool cannot draw.
- `typiclust`, `probcover`, `kcenter`: chosen from the features of every pool image
  (`transfer.selection`) by an encoder, or by raw pixels, before any label is seen.
"""

from __future__ import annotations

import numpy as np

from transfer import artifacts, backbones, features, models, selection, stream, vocabulary
from transfer.errors import TransferError
from transfer.listing import Listing

SELECTIONS = vocabulary.BUDGET_SELECTIONS


def feature_model(encoder: str, readout: str = "auto", channels: int | None = None, weights: str | None = None,
                  image_size: int | None = None):
    """(the feature model of a pretrain run directory, or None for "pixels"; its image size or
    None; its channels or None; its objective or "pixels"; the readout it reads, None for
    pixels). `channels` asked for must be the encoder's. The readout "auto" is the one the
    encoder's fine-tunes read by default (`auto_readout`). A keras:NAME backbone is built
    with `weights` for `image_size` and `channels` (the data's), read by average pooling."""
    if encoder == "pixels":
        return None, None, None, "pixels", None
    if backbones.is_backbone(encoder):
        readout = "avg" if readout == "auto" else readout
        model = backbones.build(encoder, weights, image_size, channels)
        return (models.build_features(model, readout, True), image_size, channels,
                backbones.objective(weights) or "random", readout)
    run = artifacts.open_run(encoder, "encoder")
    run.serves(channels)
    readout = auto_readout(run.manifest) if readout == "auto" else readout
    projector = run.projector() if readout == "projector" else None
    return (models.build_features(run.model, readout, True, projector), run.image_size, run.channels, run.objective,
            readout)


def auto_readout(manifest: dict) -> str:
    """The readout a pretrain run's fine-tunes read by default, and its selections choose by:
    through its projection head when it saved one (the two-view objectives: on the built-ins
    typiclust on the head's output covers more classes than on the pooled maps, 10 of 10 digits
    at 10 labels against 8; docs/selection.md), else the global average pool of the last block."""
    return "projector" if manifest.get("projector") else "avg"


def stratified(labels: np.ndarray, pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n images spread over the classes present in the pool: n // C each, one more for n % C
    classes drawn at random (all of a class smaller than its share)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[pool])
    share = np.full(len(classes), n // len(classes))
    share[rng.permutation(len(classes))[: n % len(classes)]] += 1
    chosen = [rng.permutation(pool[labels[pool] == c])[:k] for c, k in zip(classes, share)]
    return np.concatenate(chosen).astype(np.int64)


def choose(how: str, source: Listing, pool: np.ndarray, n: int, seed: int, net=None,
           image_size: int | None = None, purity: float | None = None) -> np.ndarray:
    """Positions of `source` (from `pool`) to label, `n` of them, chosen `how`. `net` (a
    feature model, None: raw pixels) and `image_size` serve the selections by features."""
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    if how not in SELECTIONS:
        raise TransferError(f"selection must be one of {', '.join(SELECTIONS)}. Received: selection={how!r}")
    if n > len(pool):
        raise TransferError(f"a budget of {n} labels is more than the {len(pool)} images of the pool")
    if how == "random":
        return np.random.default_rng(seed).permutation(pool)[:n]
    if how == "stratified":
        if source.labels is None:
            raise TransferError("a stratified draw needs the pool's labels")
        return stratified(source.labels, pool, n, seed)
    f, _, positions = features.compute(net, stream.ImageSet(source, pool, image_size))
    return positions[selection.select(how, f, n, (), seed, purity)]
