"""Property-based: whatever bytes or small arrays arrive, the image loader either
loads them or raises the toolkit's own error, never anything else."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from transfer import data
from transfer.errors import TransferError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(path):
    try:
        out = data.decode_image(path, 6)
    except TransferError as exc:
        assert str(exc).startswith(str(path))
        return
    assert out.shape[:2] == (6, 6) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


@SETTINGS
@given(blob=st.binary(max_size=600), ext=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".npy", ".tif"]),
       png_header=st.booleans())
def test_random_bytes(tmp_path, blob, ext, png_header):
    path = tmp_path / f"x{ext}"
    path.write_bytes((b"\x89PNG\r\n\x1a\n" if png_header else b"") + blob)
    _check(path)


@SETTINGS
@given(arr=arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3, 4]))),
       fmt=st.sampled_from(["PNG", "BMP", "GIF", "JPEG", "NPY"]), truncate=st.integers(0, 40))
def test_random_small_images(tmp_path, arr, fmt, truncate):
    if fmt == "NPY":
        buf = io.BytesIO()
        np.save(buf, arr)
        raw = buf.getvalue()
    else:
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        if fmt == "JPEG" and img.mode == "RGBA":
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        raw = buf.getvalue()
    if truncate:
        raw = raw[: max(1, len(raw) - truncate)]
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(raw)
    _check(path)
