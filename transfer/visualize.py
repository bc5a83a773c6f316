"""Seeing what an encoder learned: first-layer filters, images that activate chosen
units most, and feature maps of one image through every block.

All functions return float arrays in [0, 1] shaped (H, W, C) ready for `save_png`;
`html_report` gathers PNGs into one self-contained page.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from transfer import models, outputs
from transfer.errors import TransferError


def tile(tiles: list[np.ndarray], columns: int, pad: int = 1) -> np.ndarray:
    """Arrange equally sized (h, w, c) tiles in a grid with `pad` pixels of white between them."""
    h, w, c = tiles[0].shape
    rows = -(-len(tiles) // columns)
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), dtype=np.float32)
    for i, t in enumerate(tiles):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = t
    return grid


def _unit_range(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a, dtype=np.float32) if hi - lo < 1e-12 else ((a - lo) / (hi - lo)).astype(np.float32)


def first_conv(encoder: keras.Model):
    """The first Conv2D layer, inside a nested model (an ImageNet backbone) too."""
    for layer in models.all_layers(encoder):
        if isinstance(layer, keras.layers.Conv2D):
            return layer
    raise TransferError(f"{encoder.name} has no Conv2D layer")


def filter_grid(encoder: keras.Model) -> np.ndarray:
    """The first conv layer's kernels, each scaled to [0, 1]: RGB tiles when it sees 3
    channels, otherwise one row of gray tiles per input channel."""
    kernel = np.array(first_conv(encoder).kernel)  # (kh, kw, in, out)
    kh, kw, cin, cout = kernel.shape
    if cin == 3:
        return tile([_unit_range(kernel[:, :, :, o]) for o in range(cout)], columns=min(cout, 16))
    tiles = [_unit_range(kernel[:, :, i, o])[..., None] for i in range(cin) for o in range(cout)]
    return tile(tiles, columns=cout)


def _blur(x):
    k = np.outer([1, 2, 1], [1, 2, 1]).astype("float32") / 16.0
    channels = x.shape[-1]
    kernel = tf.constant(np.tile(k[:, :, None, None], (1, 1, channels, 1)))
    return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")


def maximize_activation(
    encoder: keras.Model, layer: str, units: list[int], steps: int = 128, step_size: float = 0.05,
    l2: float = 1e-3, jitter: int = 1, blur_every: int = 4, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images generated to activate each of `units` of `layer` most (gradient ascent from noise).

    Regularizers keep the result a pattern rather than noise: a small L2
    penalty, random jitter (the image is shifted a pixel each step) and a
    light blur every `blur_every` steps; pixels stay in [0, 1].

    Returns:
        (images (n, H, W, C), mean activation of each unit on its starting
        noise, mean activation on the final image), activations as the layer
        outputs them.
    """
    target = find_layer(encoder, layer)
    # Ascend the pre-activation when the layer is an activation: a ReLU unit that the
    # starting noise leaves at zero has no gradient, its input always has one.
    pre = target.input if isinstance(target, keras.layers.Activation) else target.output
    probe = keras.Model(encoder.input, [pre, target.output])
    channels = target.output.shape[-1]
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise TransferError(f"units {bad} are out of range: layer {layer} has {channels} channels (0..{channels - 1})")
    rng = np.random.default_rng(seed)
    shape = (len(units), *encoder.input.shape[1:])
    x = tf.Variable(np.clip(0.5 + 0.1 * rng.standard_normal(shape), 0, 1).astype("float32"))
    select = tf.constant(np.eye(channels, dtype="float32")[units])  # (n, channels)

    def unit_means(images, which=0):
        act = tf.cast(probe(images, training=False)[which], tf.float32)  # bfloat16 under mixed precision
        return tf.reduce_sum(tf.reduce_mean(act, axis=(1, 2)) * select, axis=1)

    start = unit_means(x, 1).numpy()
    for step in range(steps):
        dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        with tf.GradientTape() as tape:
            shifted = tf.roll(x, shift=[dy, dx], axis=[1, 2])
            objective = tf.reduce_sum(unit_means(shifted)) - l2 * tf.reduce_sum(tf.square(x - 0.5))
        grad = tape.gradient(objective, x)
        grad = grad / (tf.math.reduce_std(grad, axis=(1, 2, 3), keepdims=True) + 1e-8)
        x.assign(tf.clip_by_value(x + step_size * grad, 0.0, 1.0))
        if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
            x.assign(_blur(x))
    return x.numpy(), start, unit_means(x, 1).numpy()


def find_layer(encoder: keras.Model, name: str):
    try:
        return encoder.get_layer(name)
    except ValueError:
        names = [l.name for l in encoder.layers if "conv" in l.name or "act" in l.name or l.name.endswith("_out")]
        raise TransferError(f"no layer {name!r} in the encoder. Conv-related layers: {', '.join(names)}") from None


def default_layer(encoder: keras.Model) -> str:
    """The last activation layer of the top block (what the head reads, before pooling); for a
    backbone (its blocks inside a nested model), its last map."""
    acts = [l.name for l in encoder.layers if l.name.startswith("block") and "_act" in l.name]
    acts = acts or [l.name for l in encoder.layers if l.name.startswith("block") and l.name.endswith("_out")]
    if not acts:
        raise TransferError("the encoder has no block activation layers; name one with --layer")
    return acts[-1]


def activation_grid(images: np.ndarray) -> np.ndarray:
    tiles = [img if img.shape[-1] in (1, 3) else img[..., :3] for img in images]
    return tile(tiles, columns=min(len(tiles), 8))


def feature_maps(encoder: keras.Model, image: np.ndarray, per_block: int = 16) -> np.ndarray:
    """One row per block: the first `per_block` channels of its output for `image`,
    each scaled to [0, 1] and resized to the input's size."""
    outs = [l.output for l in encoder.layers if l.name.startswith("block") and l.name.endswith("_out")]
    maps = keras.Model(encoder.input, outs)(image[None], training=False)
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    size = image.shape[:2]
    rows = []
    for m in maps:
        m = np.array(m)[0]
        tiles = [np.array(tf.image.resize(_unit_range(m[..., c])[..., None], size, method="nearest"))
                 for c in range(min(per_block, m.shape[-1]))]
        tiles += [np.ones_like(tiles[0])] * (per_block - len(tiles))
        rows.append(tile(tiles, columns=per_block))
    source = tile([image if image.shape[-1] in (1, 3) else image[..., :3]], columns=1)
    width = max(r.shape[1] for r in rows)
    pad = lambda a, c: np.pad(a if a.shape[-1] == c else np.repeat(a[..., :1], c, -1),  # noqa: E731
                              ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=1.0)
    c = 3 if source.shape[-1] == 3 else 1
    return np.concatenate([pad(source, c)] + [pad(r, c) for r in rows], axis=0)


def save_png(image: np.ndarray, path: str | Path, min_px: int = 256) -> None:
    """Save a [0, 1] (H, W, C) array, enlarged by a whole factor so it is at least `min_px` wide."""
    from PIL import Image

    scale = max(1, -(-min_px // image.shape[1]))
    arr = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    arr = np.kron(arr, np.ones((scale, scale, 1), dtype=np.uint8))
    picture = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3])
    outputs.replace(path, lambda tmp: picture.save(tmp, format="PNG"))


def html_report(title: str, sections: list[tuple[str, str, Path]]) -> str:
    """A self-contained page: each (heading, caption, png path) embedded as base64."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
             "img{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, caption, path in sections:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p>"
                     f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts) + "\n"


# The files `write_report` writes in its folder, and their kinds (checked before any work).
REPORT_FILES = {"filters.png": outputs.PNG, "activations.png": outputs.PNG, "feature_maps.png": outputs.PNG,
                "index.html": outputs.HTML}

PREVIEWS = {
    "reconstructions.png": ("Reconstructions", "Held-out images (top) above the autoencoder's reconstructions."),
    "views.png": ("Contrastive views", "Held-out images (top) above one random augmented view of each."),
    "samples.png": ("Generated samples", "Held-out real images (top) above samples from the generator."),
}


def write_report(encoder, folder: Path, *, image: np.ndarray | None, layer: str | None,
                 units: tuple[int, ...] | None,
                 title: str, run_dir: Path | None = None, seed: int = 0) -> Path:
    """Filters, activation maximization, feature maps (when `image` is given) and the
    run's preview PNGs, as PNGs in `folder` plus `folder/index.html`. Returns the page."""
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, (heading, caption) in PREVIEWS.items():
        if run_dir is not None and (run_dir / name).is_file():
            sections.append((heading, caption, run_dir / name))
    save_png(filter_grid(encoder), folder / "filters.png", min_px=1024)
    first = first_conv(encoder)
    sections.append(("First-layer filters", f"The {first.kernel.shape[-1]} kernels of {first.name}, each scaled "
                     "to [0, 1] (one row per input channel, or in color for RGB input).", folder / "filters.png"))
    layer = layer or default_layer(encoder)
    if units is None:
        units = tuple(range(min(8, find_layer(encoder, layer).output.shape[-1])))
    images, start, end = maximize_activation(encoder, layer, list(units), seed=seed)
    save_png(activation_grid(images), folder / "activations.png", min_px=768)
    gains = ", ".join(f"{u}: {s:.2f}->{e:.2f}" for u, s, e in zip(units, start, end))
    sections.append((f"What units of {layer} respond to",
                     f"Images generated by gradient ascent from noise to activate units {list(units)} most "
                     f"(mean activation, start->end: {gains}).", folder / "activations.png"))
    if image is not None:
        save_png(feature_maps(encoder, image), folder / "feature_maps.png", min_px=512)
        sections.append(("Feature maps", "One image (top) and the first 16 channels of each block's output, "
                         "one row per block.", folder / "feature_maps.png"))
    page = folder / "index.html"
    outputs.write_text(page, html_report(title, sections))
    return page
