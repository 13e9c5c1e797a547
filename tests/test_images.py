"""Decoding: odd but valid images are indexed correctly, hostile ones refused with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmsearch.images import ImageError, decode_image

LIMIT = 89_478_485


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_rotation_is_applied():
    # 40 wide, 20 tall, stored with orientation 6 (rotate 90° clockwise to view).
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6
    out, w, h = decode_image(_encode(img, "JPEG", exif=exif), max_pixels=LIMIT)
    assert out.size == (20, 40)
    assert (w, h) == (20, 40)  # recorded as the image is viewed


def test_alpha_is_flattened_on_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out, _, _ = decode_image(_encode(img, "PNG"), max_pixels=LIMIT)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_png_and_cmyk_jpeg_become_rgb():
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    out, _, _ = decode_image(_encode(Image.fromarray(arr), "PNG"), max_pixels=LIMIT)
    assert out.mode == "RGB" and out.getpixel((7, 7))[0] > 200
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    out, _, _ = decode_image(_encode(cmyk, "JPEG"), max_pixels=LIMIT)
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(bomb, max_pixels=LIMIT)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty file"), (b"hello, not an image", "not an image")],
)
def test_garbage_gets_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data, max_pixels=LIMIT)


def test_truncated_jpeg_is_refused():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _encode(img, "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_large_jpeg_is_decoded_at_reduced_scale():
    img = Image.new("RGB", (4000, 3000), "blue")
    out, w, h = decode_image(_encode(img, "JPEG"), max_pixels=LIMIT)
    assert (w, h) == (4000, 3000)
    assert 512 <= min(out.size) < 1500
