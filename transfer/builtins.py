"""Built-in data that ships inside installed packages (no internet needed).

- `digits`: scikit-learn's 1,797 handwritten digits (8x8 gray, 10 classes).
- `photos`: about 4,000 unlabeled 32x32 gray patches cut from scikit-image's
  sample photographs (camera, astronaut, coffee, chelsea, rocket, ...), for
  pretraining; the texture photographs are left out.
- `textures`: labeled 32x32 patches of scikit-image's brick, grass and gravel
  photographs (3 classes). Training patches come from the top half of each
  photograph, test patches from the bottom half: a fixed test split.
- `faces`: scikit-image's `lfw_subset`, 200 25x25 gray images, face vs non-face.
- `patches`: about 7,500 28x28 gray patches of 10 of scikit-image's photographs and textures
  (brick, grass, gravel, camera, coins, moon, coffee, chelsea, astronaut, rocket), each
  at full and half scale; the class is the photograph. Told apart by texture, grey level
  and outline: the development set for texture-rich images. A fixed test split by place
  (each photograph's bottom quarter), so no pixel sits on both sides (and the 3 flat
  pool patches identical to a test patch are left out).
- `fills`: 5,000 28x28 gray animal silhouettes (bird, giraffe, elephant, cow, sheep; from
  `animals`) each filled with one of two surfaces, a smooth bright one (scikit-image's moon)
  or a darker textured one (gravel), at a grey level that varies per image; 10 classes, an
  animal and its surface. Centred, aligned objects that an outline alone does not tell apart
  (half the classes differ only by grey level and texture), where raw pixels are strong
  (about 79% 20-NN): the development set for the cues that view augmentation can erase.
  The test split is the animals' (by silhouette); test fills come from the bottom quarter
  of each surface photograph, pool fills from the rest.
- `animals`: the `animal-mnist` package's 10,000 28x28 gray silhouettes of 10 animals
  (1,000 each; MIT), harder than digits. A fixed test split by content id (about one
  image in five, the same for identical images, so the 284 duplicated images never
  sit on both sides).

A built-in used as a *pretraining* source gives only the images outside its
test split (the fixed one, or else the content-hash split with
`DEFAULT_TEST_FRACTION`, the same rule `fine-tune` uses), so pretraining never
sees the images a later fine-tune is tested on.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.resources
import io
import pickle
from dataclasses import dataclass

import numpy as np

from transfer.data import DEFAULT_TEST_FRACTION, LUMA, content_id, convert_channels, resize, split_test
from transfer.errors import TransferError
from transfer.listing import InMemory, Listing

PATCH = 32


@dataclass
class _Raw:
    images: list[np.ndarray]  # each (h, w, c) float32 in [0, 1]
    ids: np.ndarray
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    test_mask: np.ndarray | None = None  # a fixed test split, if the set defines one


def _ids(arrays) -> np.ndarray:
    return np.array([content_id(np.ascontiguousarray(a).tobytes()) for a in arrays])


@functools.lru_cache(maxsize=None)
def _digits() -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [(im / 16.0).astype(np.float32)[..., None] for im in d.images]
    return _Raw(images, _ids(d.images.astype(np.uint8)), d.target.astype(np.int64),
                tuple(str(c) for c in d.target_names))


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == np.bool_:
        img = img.astype(np.float32)
    elif img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    if img.ndim == 3:
        img = img[..., :3] @ LUMA
    return img.astype(np.float32)


def _patches(img: np.ndarray, stride: int, rows: slice = slice(None)) -> list[np.ndarray]:
    img = img[rows]
    return [img[y : y + PATCH, x : x + PATCH, None]
            for y in range(0, img.shape[0] - PATCH + 1, stride)
            for x in range(0, img.shape[1] - PATCH + 1, stride)]


PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "clock",
          "hubble_deep_field", "immunohistochemistry", "cell", "text", "horse", "colorwheel", "logo")


@functools.lru_cache(maxsize=None)
def _photos() -> _Raw:
    import skimage.data

    rng = np.random.default_rng(0)
    images = []
    for name in PHOTOS:
        img = _gray(getattr(skimage.data, name)())
        if min(img.shape) >= 4 * PATCH:  # halve large photographs so patches hold whole shapes
            img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
            img = img.reshape(img.shape[0] // 2, 2, img.shape[1] // 2, 2).mean(axis=(1, 3))
        for _ in range(250):
            y = rng.integers(0, img.shape[0] - PATCH + 1)
            x = rng.integers(0, img.shape[1] - PATCH + 1)
            images.append(img[y : y + PATCH, x : x + PATCH, None].copy())
    return _Raw(images, _ids(images))


@functools.lru_cache(maxsize=None)
def _textures() -> _Raw:
    import skimage.data

    images, labels, test = [], [], []
    names = ("brick", "grass", "gravel")
    for c, name in enumerate(names):
        img = _gray(getattr(skimage.data, name)())
        half = img.shape[0] // 2
        top = _patches(img, 16, slice(0, half))
        bottom = _patches(img, 32, slice(half, None))
        images += top + bottom
        labels += [c] * (len(top) + len(bottom))
        test += [False] * len(top) + [True] * len(bottom)
    return _Raw(images, _ids(images), np.array(labels, dtype=np.int64), names, np.array(test))


PATCH_SOURCES = ("brick", "grass", "gravel", "camera", "coins", "moon", "coffee", "chelsea", "astronaut", "rocket")
PATCH_SIDE = 28  # as the small gray photograph sets users bring (28x28)
PATCH_SCALES = (1, 2)  # each photograph as it is and halved: a class is not one scale
PATCH_POOL, PATCH_TEST = 300, 75  # patches per photograph and scale, on each side of the split


@functools.lru_cache(maxsize=None)
def _patch_set() -> _Raw:
    """Which photograph a 28x28 gray patch comes from, 10 classes told apart by texture, grey
    level and outline (not by shapes a global pool keeps): the development set for texture-rich
    images. The split is by place: test patches come from the bottom quarter of each photograph,
    pool patches from the rest, so no pixel sits on both sides."""
    import skimage.data

    rng = np.random.default_rng(0)
    images, labels, test = [], [], []
    for c, name in enumerate(PATCH_SOURCES):
        full = _gray(getattr(skimage.data, name)())
        for scale in PATCH_SCALES:
            img = full[: full.shape[0] // scale * scale, : full.shape[1] // scale * scale]
            img = img.reshape(img.shape[0] // scale, scale, img.shape[1] // scale, scale).mean(axis=(1, 3))
            cut = img.shape[0] * 3 // 4
            for region, n, is_test in ((img[:cut], PATCH_POOL, False), (img[cut:], PATCH_TEST, True)):
                ys = rng.integers(0, region.shape[0] - PATCH_SIDE + 1, n)
                xs = rng.integers(0, region.shape[1] - PATCH_SIDE + 1, n)
                images += [region[y : y + PATCH_SIDE, x : x + PATCH_SIDE, None].astype(np.float32).copy()
                           for y, x in zip(ys, xs)]
                labels += [c] * n
                test += [is_test] * n
    ids, test = _ids(images), np.array(test)
    keep = test | ~np.isin(ids, ids[test])  # a flat patch (sky, shadow) drawn on both sides stays on the test side
    return _Raw([im for im, k in zip(images, keep) if k], ids[keep], np.array(labels, dtype=np.int64)[keep],
                PATCH_SOURCES, test[keep])


@functools.lru_cache(maxsize=None)
def _faces() -> _Raw:
    import skimage.data

    raw = skimage.data.lfw_subset().astype(np.float32)  # first 100 faces, then 100 non-faces
    images = [im[..., None] for im in raw]
    labels = np.array([0] * 100 + [1] * 100, dtype=np.int64)
    return _Raw(images, _ids(raw), labels, ("face", "non-face"))


ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")  # labels 0-9
ANIMALS_TEST = 5  # one content-id bucket in 5 is the test split


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: the package's data files are pickles, and
    a pickle may otherwise name any callable to run."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}: only numpy arrays are allowed")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return getattr(importlib.import_module(module), name)


def _arrays(resource) -> np.ndarray:
    array = _ArraysOnly(io.BytesIO(gzip.decompress(resource.read_bytes()))).load()
    if not isinstance(array, np.ndarray):
        raise TransferError(f"{resource}: expected a numpy array, found {type(array).__name__}")
    return array


@functools.lru_cache(maxsize=None)
def _animals() -> _Raw:
    try:
        folder = importlib.resources.files("animal_mnist") / "data" / "Animal_MNIST"
    except ModuleNotFoundError:
        raise TransferError("built-in 'animals' needs the animal-mnist package (pip install animal-mnist)") from None
    images = _arrays(folder / "animal_data_version_3.gz")
    labels = _arrays(folder / "animal_label_version_3.gz").astype(np.int64)
    if images.shape != (len(labels), 28, 28) or labels.min() < 0 or labels.max() >= len(ANIMALS):
        raise TransferError(f"animal-mnist: unexpected data {images.shape}, labels {labels.shape}")
    ids = _ids(images)
    test = np.array([int(i, 16) % ANIMALS_TEST == 0 for i in ids])
    return _Raw([(im / 255.0).astype(np.float32)[..., None] for im in images], ids, labels, ANIMALS, test)


FILL_ANIMALS = ("bird", "giraffe", "elephant", "cow", "sheep")  # outlines a pixel k-NN tells apart well
# (surface photograph, mean grey level, texture amplitude): a smooth bright fill, a darker textured one
FILL_SURFACES = (("moon", 0.85, 0.03), ("gravel", 0.5, 0.15))
FILL_GREY_SPREAD = 0.06  # the per-image grey level's standard deviation about its surface's


@functools.lru_cache(maxsize=None)
def _fill_set() -> _Raw:
    """Animal silhouettes filled with a surface: class = (animal, surface). Each silhouette is
    used once, the surfaces alternating within an animal's images; the fill is the silhouette
    (its anti-aliased edge kept) times a grey level plus the surface's standardised texture."""
    import skimage.data

    animals = _animals()
    rng = np.random.default_rng(0)
    surfaces = [_gray(getattr(skimage.data, name)()) for name, _, _ in FILL_SURFACES]
    images, labels, test = [], [], []
    for a, name in enumerate(FILL_ANIMALS):
        for k, i in enumerate(np.flatnonzero(animals.labels == ANIMALS.index(name))):
            s = k % len(FILL_SURFACES)
            _, grey, amplitude = FILL_SURFACES[s]
            src, is_test = surfaces[s], bool(animals.test_mask[i])
            cut = src.shape[0] * 3 // 4
            region = src[cut:] if is_test else src[:cut]
            y = rng.integers(0, region.shape[0] - 28 + 1)
            x = rng.integers(0, region.shape[1] - 28 + 1)
            texture = region[y : y + 28, x : x + 28]
            texture = (texture - texture.mean()) / (texture.std() + 1e-6)
            fill = np.clip(grey + rng.normal(0.0, FILL_GREY_SPREAD) + amplitude * texture, 0.0, 1.0)
            images.append((animals.images[i][..., 0] * fill)[..., None].astype(np.float32))
            labels.append(a * len(FILL_SURFACES) + s)
            test.append(is_test)
    names = tuple(f"{a}-{s}" for a in FILL_ANIMALS for s, _, _ in FILL_SURFACES)
    return _Raw(images, _ids(images), np.array(labels, dtype=np.int64), names, np.array(test))


_SOURCES = {"digits": _digits, "photos": _photos, "textures": _textures, "faces": _faces, "animals": _animals,
            "patches": _patch_set, "fills": _fill_set}


def names() -> list[str]:
    return sorted(_SOURCES)


def is_builtin(src: str) -> bool:
    return str(src) in _SOURCES


def load(name: str, image_size: int, channels: int | None, labeled: bool, split: str) -> Listing:
    """A built-in set, decoded into memory.

    Args:
        split: "all", or "pretrain" (everything but the test split).
    """
    if name not in _SOURCES:
        raise TransferError(f"unknown built-in data '{name}'. Available: {names()}")
    raw = _SOURCES[name]()
    if labeled and raw.labels is None:
        raise TransferError(f"built-in '{name}' has no labels; it is for pretraining")
    index = np.arange(len(raw.images))
    if split == "pretrain":
        if raw.test_mask is not None:
            index = np.flatnonzero(~raw.test_mask)
        elif raw.labels is not None:
            index, _ = split_test(raw.labels, raw.ids, DEFAULT_TEST_FRACTION)
    images = np.stack([resize(raw.images[i], image_size) for i in index])
    if channels is not None:
        images = convert_channels(images, channels, name)
    return Listing(
        src=name, paths=[f"{name}[{i}]" for i in index], ids=raw.ids[index],
        labels=raw.labels[index] if labeled else None,
        class_names=list(raw.class_names) if labeled else [],
        channels=int(images.shape[-1]), store=InMemory(images.astype(np.float32)),
        test_mask=raw.test_mask[index] if (labeled and raw.test_mask is not None) else None,
    )
